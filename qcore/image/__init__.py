"""The seed paper's quantum image cipher (paper 000): NEQR/GNEQR images, bit-plane scrambling, a 9-D
Lorenz keystream, position scrambling, quantum XOR and colour mixing; a numpy path and a qiskit circuit
path (`circuit`, imported on demand) that produce the identical cipher image, plus the Wu et al. metrics.
"""

from .cipher import CipherImage, decrypt, encrypt

__all__ = ["CipherImage", "decrypt", "encrypt"]
