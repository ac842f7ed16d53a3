"""Design of the exchange splitting J of a double quantum dot by gradients through the ED.

Run: python examples/exchange_design.py [--target-mev 0.1] [--fast] [--out runs/exchange]

Two electrons in a double dot along x, V(x, y) = (1/2) m* w^2 (x'^2 + y'^2) + V_b exp(-x'^2 /
(2 w_b^2)) + eps x' / (2 d) (x', y' from the box centre, hbar w = 15 meV, w_b = 2.5 nm, d = 7
nm): a parabolic dot split by a gate barrier of height V_b into two wells, with a detuning eps,
the energy difference across 2 d. The parameters are log(V_b / eV) and eps / 10 meV, so that a
unit step means as much in either. The singlet-triplet splitting J = E_T - E_S
(qdjax.ed.spectrum, N = 2) falls roughly exponentially with the barrier. Newton steps on log J
with respect to (log V_b, eps), the minimum-norm step of the one equation log J = log J_target
in two unknowns, with the gradient from jax.grad through the ED, tune the barrier and the
detuning until J is within --tolerance of the target. Prints each step and writes a figure: J
against the barrier height at the designed detuning, the designed potential, and the singlet
and triplet densities.

--fast uses a small grid (32 pixels, 12 x 12 sine modes, 4 orbitals); the default the paper's
grid with 8 orbitals.
"""

import argparse
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import qdjax
from qdjax import ed, plot


#: eV per unit of the detuning parameter (10 meV), so that both parameters are of order one.
DETUNING_UNIT = 0.01


def double_dot(params, config, separation_nm=7.0, barrier_width_nm=2.5, hbar_omega=0.015):
    """V (grid, grid) eV of the double dot; params = (log(V_b / eV), eps / DETUNING_UNIT), traced."""
    log_barrier, detuning = params[0], DETUNING_UNIT * params[1]
    c = (jnp.arange(config.grid) + 0.5) * config.pixel_nm - 0.5 * config.length_nm
    x, y = c[:, None], c[None, :]
    k = hbar_omega**2 / (4.0 * config.kinetic_prefactor)  # (1/2) m* w^2 = (hbar w)^2 / (4 hbar^2 / 2 m*)
    barrier = jnp.exp(log_barrier) * jnp.exp(-0.5 * (x / barrier_width_nm) ** 2)
    return k * (x**2 + y**2) + barrier + detuning * x / (2.0 * separation_nm)


def exchange(V, config):
    """(J eV, energies, total spin, densities) of two electrons in V: J = E(lowest S = 1) - E(S = 0 ground)."""
    sp = ed.spectrum(V, 2, 4, config)
    triplet = jnp.argmax(jax.lax.stop_gradient(sp.total_spin) > 0.5)
    return sp.energies[triplet] - sp.energies[0], sp, triplet


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-mev", type=float, default=0.1, help="target J in meV (default 0.1)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="relative tolerance on J (default 0.01)")
    parser.add_argument("--barrier-mev", type=float, default=20.0, help="starting barrier height V_b in meV")
    parser.add_argument("--detuning-mev", type=float, default=2.0, help="starting detuning in meV")
    parser.add_argument("--steps", type=int, default=20, help="largest number of Newton steps")
    parser.add_argument("--scan", type=int, default=9, help="barrier heights in the figure's J(V_b) scan")
    parser.add_argument("--fast", action="store_true", help="small grid and basis (a quick check)")
    parser.add_argument("--out", default="runs/exchange", help="output folder")
    args = parser.parse_args(argv)

    config = qdjax.EDConfig(grid=32, basis=12, orbitals=4) if args.fast else qdjax.EDConfig()
    target = 1e-3 * args.target_mev

    @jax.jit
    def log_j_and_grad(params):
        def log_j(p):
            j, _, _ = exchange(double_dot(p, config), config)
            return jnp.log(j)

        return jax.value_and_grad(log_j)(params)

    params = jnp.array([math.log(1e-3 * args.barrier_mev), 1e-3 * args.detuning_mev / DETUNING_UNIT])
    start = time.perf_counter()
    history = []
    print(f"target J = {args.target_mev} meV (within {100 * args.tolerance:g} %), {config}")
    print("step   V_b (meV)   eps (meV)    J (meV)")
    for step in range(args.steps + 1):
        value, grad = log_j_and_grad(params)
        j = float(jnp.exp(value))
        history.append({"step": step, "barrier_mev": 1e3 * math.exp(float(params[0])),
                        "detuning_mev": 1e3 * DETUNING_UNIT * float(params[1]), "J_mev": 1e3 * j})  # fmt: skip
        print(f"{step:4d}  {history[-1]['barrier_mev']:10.4f}  {history[-1]['detuning_mev']:10.4f}  {1e3 * j:10.6f}")
        if abs(j / target - 1.0) <= args.tolerance:
            break
        residual = value - math.log(target)
        # minimum-norm Newton step on log J = log target, at most 0.5 in each parameter
        step_vector = -residual * grad / jnp.sum(grad**2)
        params = params + step_vector * jnp.minimum(1.0, 0.5 / jnp.max(jnp.abs(step_vector)))
    converged = abs(j / target - 1.0) <= args.tolerance
    elapsed = time.perf_counter() - start
    print(f"{'reached' if converged else 'did not reach'} the target in {step} steps, {elapsed:.1f} s")

    # J against the barrier at the designed detuning (one batched spectrum), and the densities
    barriers = float(params[0]) + np.linspace(-0.5, 0.5, args.scan)
    scan_V = jnp.stack([double_dot(jnp.array([b, params[1]]), config) for b in barriers])
    scan_sp = ed.spectrum(scan_V, 2, 4, config)
    triplets = np.argmax(np.asarray(scan_sp.total_spin) > 0.5, axis=-1)
    scan_j = np.take_along_axis(np.asarray(scan_sp.energies), triplets[:, None], -1)[:, 0] - np.asarray(
        scan_sp.energies[:, 0])
    V = double_dot(params, config)
    _, sp, triplet = exchange(V, config)
    out = pathlib.Path(args.out)
    path = plot.exchange_design(
        np.exp(barriers) * 1e3, scan_j * 1e3, 1e3 * math.exp(float(params[0])), 1e3 * j, np.asarray(V),
        np.asarray(sp.densities[0]), np.asarray(sp.densities[int(triplet)]), config.length_nm,
        out / "exchange_design.png",
    )
    summary = {"target_mev": args.target_mev, "converged": converged, "J_mev": 1e3 * j,
               "barrier_mev": 1e3 * math.exp(float(params[0])), "detuning_mev": 1e3 * DETUNING_UNIT * float(params[1]),
               "steps": step, "seconds": elapsed, "history": history, "config": str(config)}  # fmt: skip
    (out / "exchange_design.json").write_text(json.dumps(summary, indent=2))
    print(f"figure: {path}")
    return summary


if __name__ == "__main__":
    main()
