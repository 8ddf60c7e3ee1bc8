"""The four networks of CorrDiff and how they fit together.

::

    x ──g_a──▶ y ──Q──▶ ŷ ─┬─ g_s ───────────▶ x_b   (codec's own reconstruction; conditioning)
                            ├─ D_e ───────────▶ x_e   (privileged end-to-end decoder, MSE)
                            └─ ε_θ(x_t, t, ŷ, x_b)    (conditional diffusion, DDIM)

    codec        :mod:`pdc.models.codec`        CompressAI mean-scale hyperprior
    diffusion    :mod:`pdc.models.diffusion`    diffusers UNet2DModel on pixel-unshuffled tensors
    privileged   :mod:`pdc.models.privileged`   g_s copy + residual refiner
    correction   :mod:`pdc.models.correction`   λ* by least squares, quantizer, rANS tables
    sampler      :mod:`pdc.models.sampler`      the corrected DDIM loop shared by encoder and decoder
    package      :mod:`pdc.models.package`      the composite model: four state_dicts + config + hash
"""
