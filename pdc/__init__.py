"""pdc: perceptual image compression with a diffusion decoder corrected by a privileged decoder.

Core modules (models, bitstream, metrics, data) never import the orchestrators (Prefect, Ray, MLflow);
those live in ``flows/`` and :mod:`pdc.tracking`.
"""

__version__ = "0.1.0"
