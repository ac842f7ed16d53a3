"""pix2pix maps between potential and density images (Pantis-Simut et al. 2023, section III.2).

Modules, in data-flow order:

* `qdjax.ml.scaling`    affine maps between physical images (eV, nm^-2) and [-1, 1];
* `qdjax.ml.models`     configurations, U-Net generator, PatchGAN discriminator, receptive fields;
* `qdjax.ml.state`      the training state (`TrainState`): initialisation, optimiser;
* `qdjax.ml.physics`    the ED-consistency term of the inverse generator's loss (`EDTerm`):
                        the ED of the generated potential inside the training step;
* `qdjax.ml.checkpoint` Orbax checkpoints: latest and best-by-validation-R^2, exact resume;
* `qdjax.ml.train`      losses, the pure jitted training step, augmentation (jitter, flips,
                        the symmetry group of the square), prediction and the `fit` loop
                        (data-parallel over devices, `qdjax.parallel`).

The training-step timer lives with the ED timers in `qdjax.benchmark` (``qdjax bench --train``).

The ML side imports Flax, Optax and Orbax; the physics core never imports it.
"""
