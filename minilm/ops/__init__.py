"""The ops: one NumPy reference module per component, a Numba kernel module beside each,
and the contract every backend implements (contract.py; the CUDA kernels are in kernels/)."""
