"""ddimlab: DDPM and DDIM derived, verified and usable.

Modules: schedule, gaussian, diffusion, elbo, samplers, ode, toy, unet, data, train, checkpoint,
quality, evaluate, plotting, nb, cli. Import them directly, e.g. `from ddimlab import samplers`.
"""
__version__ = "0.1.0"
