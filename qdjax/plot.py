"""Figures of potentials and densities (matplotlib, written to files; no screen needed).

Images are shown with x along the horizontal axis and y upwards (imshow of the transposed
array with origin="lower"), in nm, so that a map V[i, j] = V(x_i, y_j) looks like the box.
"""

from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | pathlib.Path) -> pathlib.Path:
    """Lay out, write as PNG (creating parent folders) and close a figure; returns the path
    written (``.png`` added to a name without a suffix)."""
    fig.tight_layout()
    path = pathlib.Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def show_map(ax, image: np.ndarray, length_nm: float, title: str, unit: str, cmap: str = "viridis"):
    """Draw one (grid, grid) map on `ax` with axes in nm and a colour bar in `unit`."""
    extent = (0.0, length_nm, 0.0, length_nm)
    im = ax.imshow(np.asarray(image).T, origin="lower", extent=extent, cmap=cmap)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (nm)", fontsize=8)
    ax.set_ylabel("y (nm)", fontsize=8)
    ax.tick_params(labelsize=7)
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(unit, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def potential_and_densities(
    V: np.ndarray,
    densities: Mapping[str, np.ndarray],
    length_nm: float,
    path: str | pathlib.Path,
    title: str | None = None,
) -> pathlib.Path:
    """One row: the potential (eV) and any number of densities (nm^-2), saved as PNG.

    Args:
      V: (grid, grid) potential, eV.
      densities: label -> (grid, grid) density, nm^-2 (e.g. {"n_int, N=2": ...}).
      length_nm: box side L, nm.
      path: output file (.png); parent folders are created.
      title: optional figure title.

    Returns:
      The path written.
    """
    plt = _pyplot()
    panels = 1 + len(densities)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.0), squeeze=False)
    show_map(axes[0, 0], V, length_nm, "potential V", "eV", cmap="cividis")
    for ax, (label, n) in zip(axes[0, 1:], densities.items()):
        show_map(ax, n, length_nm, label, "nm$^{-2}$")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def image_grid(
    rows: Sequence[Sequence[tuple[str, np.ndarray, str]]],
    length_nm: float,
    path: str | pathlib.Path,
    title: str | None = None,
) -> pathlib.Path:
    """A grid of maps: rows of (label, (grid, grid) image, unit) triples, saved as PNG.

    Used for the mapping grid (paper Fig. 3), error maps (Figs. A.1, A.2), densities for
    N = 1..4 (Fig. 9) and the inverse problem (Fig. 10).
    """
    plt = _pyplot()
    n_rows = len(rows)
    n_cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 2.9 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            if c >= len(row):
                ax.axis("off")
                continue
            label, image, unit = row[c]
            cmap = "cividis" if unit == "eV" else ("magma" if label.startswith("|") else "viridis")
            show_map(ax, image, length_nm, label, unit, cmap=cmap)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def curves(
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    xlabel: str,
    ylabel: str,
    path: str | pathlib.Path,
    title: str | None = None,
    logy: bool = False,
    legend: bool = True,
) -> pathlib.Path:
    """Line plot of label -> (x, y) series, saved as PNG (losses, R^2 or SSIM vs step)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    for label, (x, y) in series.items():
        ax.plot(np.asarray(x), np.asarray(y), label=label, lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def spectrum_levels(
    energies: np.ndarray,
    total_spin: np.ndarray,
    spin_densities: np.ndarray,
    length_nm: float,
    path: str | pathlib.Path,
    title: str | None = None,
) -> pathlib.Path:
    """Levels coloured by total spin S, and the up and down densities of each level's S_z = S
    member (one column per level), saved as PNG.

    Args:
      energies: (n,) eV, ascending (`qdjax.ed.spectrum`).
      total_spin: (n,) S.
      spin_densities: (n, 2, grid, grid) nm^-2, up and down.
      length_nm: box side L, nm.
      path: output file (.png).
      title: optional figure title.
    """
    plt = _pyplot()
    n = len(energies)
    fig, axes = plt.subplots(2, n + 1, figsize=(2.9 * (n + 1), 5.6), squeeze=False)
    ax = axes[0, 0]
    excitation = 1e3 * (np.asarray(energies) - energies[0])
    spins = np.asarray(total_spin)
    colours = plt.get_cmap("viridis")(np.clip(spins / max(1.0, spins.max()), 0.0, 1.0))
    for i, (e, s) in enumerate(zip(excitation, spins)):
        ax.hlines(e, 0.0, 1.0, colors=[colours[i]], lw=2.0)
        ax.text(1.05, e, f"{i}: S={s:.1f}", fontsize=7, va="center")
    ax.set_xlim(0.0, 1.6)
    ax.set_xticks([])
    ax.set_ylabel("E - E$_0$ (meV)", fontsize=8)
    ax.set_title("levels (colour: S)", fontsize=9)
    axes[1, 0].axis("off")
    for i in range(n):
        for row, label in enumerate(("up", "down")):
            show_map(axes[row, i + 1], spin_densities[i][row], length_nm, f"{i}: S={spins[i]:.1f}, n_{label}",
                     "nm$^{-2}$")  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def exchange_design(
    barriers_mev: np.ndarray,
    j_mev: np.ndarray,
    barrier_mev: float,
    j_design_mev: float,
    V: np.ndarray,
    singlet: np.ndarray,
    triplet: np.ndarray,
    length_nm: float,
    path: str | pathlib.Path,
) -> pathlib.Path:
    """J against the barrier height (log scale) with the designed point, the designed potential
    and its singlet and triplet densities, saved as PNG (examples/exchange_design.py)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(13.0, 3.0), squeeze=False)
    ax = axes[0, 0]
    ax.semilogy(barriers_mev, j_mev, "o-", lw=1.2, ms=3)
    ax.semilogy([barrier_mev], [j_design_mev], "r*", ms=10, label=f"design: J = {j_design_mev:.4f} meV")
    ax.set_xlabel("barrier height V$_b$ (meV)", fontsize=8)
    ax.set_ylabel("J = E$_T$ - E$_S$ (meV)", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    show_map(axes[0, 1], V, length_nm, "designed potential", "eV", cmap="cividis")
    show_map(axes[0, 2], singlet, length_nm, "singlet density", "nm$^{-2}$")
    show_map(axes[0, 3], triplet, length_nm, "triplet density", "nm$^{-2}$")
    return _save(fig, path)
