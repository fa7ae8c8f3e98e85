"""MR-GAN (paper §3.2-3.3): realistic low-resolution face synthesis.

Find the paper in the code:

* generator G, Eq. 1 (spatial attention), fusion units (Fig. 3), local generator G_l
  -> :mod:`ranface.gan.generator`
* discriminators D_1..D_4 (global, eyes, nose, mouth) -> :mod:`ranface.gan.discriminators`
* losses Eq. 2-6, frozen expert F -> :mod:`ranface.gan.losses`
* face regions and Eq. 5's centre patch -> :mod:`ranface.gan.regions`
* the ``train-gan`` recipe (§4.2) -> :mod:`ranface.gan.trainer`
* ``synthesize`` and the degrader registry -> :mod:`ranface.gan.degraders`
* configs -> :mod:`ranface.gan.config`

Importing this package imports nothing heavy; import the submodules.
"""
