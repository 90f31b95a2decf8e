"""Decoding, once for every backend: the policy (`DecodeSpec`), and greedy, beam and sampled search over a stepper.

Torch-free: the search code reads its arrays through a small `Ops` namespace (NumPy here, torch in
`captioning.model.generation`), so onnxruntime users decode without torch and get torch's tokens.
"""

from captioning.decoding.search import Generated, Stepper, generate
from captioning.decoding.spec import DecodeSpec, TokenIds

__all__ = ["DecodeSpec", "Generated", "Stepper", "TokenIds", "generate"]
