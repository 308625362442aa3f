"""ddimlab: DDPM and DDIM derived, verified and usable.

Modules, in the notebooks' order: schedule, gaussian, diffusion, elbo, samplers, ode, toy, lab, unet, data,
train, checkpoint, pretrained, quality, fid, generate, tables, plotting, nb, files, devices, demo, cli.
Import them directly, e.g. `from ddimlab import samplers`.
"""
__version__ = "0.1.0"
