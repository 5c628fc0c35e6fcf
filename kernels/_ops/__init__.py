"""torch.library registration and autograd, one module per op and backend: <op>_triton.py registers the Triton
launchers as custom ops; <op>_native.py adds fake implementations and autograd to the C++ ops of csrc/ops.cpp."""
