"""Triton kernels and their launchers, one module per op. Launchers take and return torch tensors and do no
autograd; registration with torch.library and autograd live in kernels/_ops/<op>_triton.py."""
