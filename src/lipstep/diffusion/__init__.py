"""lipstep.diffusion"""
