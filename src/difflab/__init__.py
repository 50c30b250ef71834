"""difflab: eight image-generation papers as one composable PyTorch toolkit.

The pieces meet at a few small contracts (see the README):

* a **network** is called ``net(x_t, t, cond)`` and declares ``net.prediction`` in
  ``{"eps", "x0", "v"}``;
* a :class:`~difflab.diffusion.Denoiser` wraps a network and a schedule and always returns
  both ``eps`` and ``x0``;
* a **sampler** is a pure function over a Denoiser.
"""

__version__ = "0.1.0"
