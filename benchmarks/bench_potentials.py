"""Speed of the random confinement potentials (`qdjax.potentials.random_potentials`).

    python benchmarks/bench_potentials.py [--maps 1000] [--repeats 5] [--out bench_potentials.json]

Times `random_potentials` on `--maps` consecutive seeds (paper parameters, 64 x 64 maps),
`--repeats` times on fresh seeds after one untimed warm-up call, and prints the median in
seconds per 100 maps and in maps per second. The bar (under 1 s per 100 maps, so that data
sets of thousands of maps take seconds) is checked here, not in the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics

from bench_ed import machine


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maps", type=int, default=1000, help="maps per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (median)")
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.maps < 1 or args.repeats < 1:
        parser.error("--maps and --repeats must be positive")

    from qdjax import potentials
    from qdjax.benchmark import wall_times
    from qdjax.config import EDConfig

    config = EDConfig()
    potentials.random_potentials(range(10), config)
    starts = iter(range(10, 10 + args.repeats * args.maps, args.maps))

    def fresh_maps():
        start = next(starts)
        return potentials.random_potentials(range(start, start + args.maps), config)

    times = wall_times(fresh_maps, args.repeats)
    median = statistics.median(times)
    result = {
        "maps": args.maps,
        "grid": config.grid,
        "repeats": args.repeats,
        "seconds": times,
        "median_s": median,
        "s_per_100_maps": 100 * median / args.maps,
        "maps_per_s": args.maps / median,
        "machine": machine(),
    }
    print(
        f"{args.maps} maps of {config.grid} x {config.grid}: median {median:.3f} s over {args.repeats} calls "
        f"({result['s_per_100_maps']:.3f} s per 100 maps, {result['maps_per_s']:.0f} maps/s; "
        f"min {min(times):.3f}, max {max(times):.3f} s)"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
