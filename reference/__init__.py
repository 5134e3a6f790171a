"""NumPy/CuPy reference of the diffusion mathematics behind DifNet."""
