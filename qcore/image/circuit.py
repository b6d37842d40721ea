"""The image cipher as a quantum circuit on qiskit-aer, for images up to 16x16 (a cross-check, not a
production path: the numpy path in `cipher` is the one that encrypts real images).

Register layout (qiskit is little-endian: qubit k is bit k of a basis-state index):
- colour qubits 0 .. Q-1: bit i of channel c is qubit c*q + i (Q = q grayscale, 3q for GNEQR colour);
- position qubits Q .. Q+2n-1: X in the low n, Y in the high n, so the register holds Y*2^n + X.

Gates, in the order of `cipher.apply_plan`, each a permutation of basis states:
- NEQR preparation: H on every position qubit, then for every position the X gates controlled by all
  position qubits (open controls made with X conjugation) that write its colour word;
- bit-plane scrambling: a SWAP network realising the plane permutation, then CNOTs b_(i-1) -> b_i for
  i = q-1 .. 1;
- position scrambling: the permutation of position basis states as one unitary on the position qubits;
- quantum XOR with the key image: position-controlled X gates on the colour qubits, over the SAME
  position qubits as the image;
- RGB: the channel permutation as register SWAPs, then CNOTs channel 0 -> 1 and 1 -> 2, bit by bit.
The circuit is then measured: every shot reads one (position, colour word) pair, and the cipher image is
read off once every position has been seen. Up to 24 qubits run on the statevector method; wider circuits
(RGB) on the matrix-product-state method, which handles them because the state's entanglement is at
most 2n ebits.

qiskit is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, SimulationError
from . import chaos
from .cipher import CipherImage, CipherPlan, derive_plan, image_tag
from .neqr import Layout, basis_states, from_basis_states, layout_of, pad

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

MAX_SIDE = 16
"""Largest padded side the circuit path accepts."""
STATEVECTOR_MAX_QUBITS = 24
SHOTS_PER_POSITION = 32
"""Shots per pixel; a position missed by all of them would raise (probability ~ 4^n e^-32 for a seed)."""


def _controlled_xor(qc: QuantumCircuit, words: np.ndarray, pos: list[int]) -> None:
    # For each position, X gates on its colour bits, controlled by the position register equal to it.
    n_pos = len(pos)
    for index, word in enumerate(words.tolist()):
        if word == 0:
            continue
        opened = [pos[b] for b in range(n_pos) if not (index >> b) & 1]
        if opened:
            qc.x(opened)
        for bit in range(word.bit_length()):
            if (word >> bit) & 1:
                qc.mcx(pos, bit)
        if opened:
            qc.x(opened)


def _permute_blocks(qc: QuantumCircuit, perm: list[int], base: int, width: int) -> None:
    # SWAP network: afterwards block j holds what block perm[j] held (blocks of `width` qubits).
    current = list(range(len(perm)))
    for j, source in enumerate(perm):
        k = current.index(source)
        if k != j:
            for w in range(width):
                qc.swap(base + j * width + w, base + k * width + w)
            current[j], current[k] = current[k], current[j]


def build_circuit(padded: np.ndarray, plan: CipherPlan) -> QuantumCircuit:
    """NEQR preparation of `padded` followed by the cipher's gates and a full measurement."""
    from qiskit import QuantumCircuit
    from qiskit.circuit.library import UnitaryGate

    lay = plan.layout
    q, big_q, n_pos = lay.bits, lay.colour_qubits, 2 * lay.n
    qc = QuantumCircuit(big_q + n_pos, big_q + n_pos)
    pos = list(range(big_q, big_q + n_pos))
    qc.h(pos)
    _controlled_xor(qc, basis_states(padded, lay), pos)
    for c in range(lay.channels):
        _permute_blocks(qc, [int(p) for p in plan.plane_perm[c]], c * q, 1)
        for i in range(q - 1, 0, -1):
            qc.cx(c * q + i - 1, c * q + i)
    size = lay.side * lay.side
    perm_matrix = np.zeros((size, size))
    perm_matrix[np.arange(size), plan.position_src] = 1.0  # |src[i]> -> |i>
    qc.append(UnitaryGate(perm_matrix, label="positions"), pos)
    _controlled_xor(qc, basis_states(plan.key_image, lay), pos)
    if lay.channels == 3:
        _permute_blocks(qc, list(plan.channel_perm), 0, q)
        for src, dst in ((0, 1), (1, 2)):
            for i in range(q):
                qc.cx(src * q + i, dst * q + i)
    qc.measure(range(big_q + n_pos), range(big_q + n_pos))
    return qc


def run_circuit(qc: QuantumCircuit, layout: Layout, seed: int = 0) -> np.ndarray:
    """Sample the measured circuit and read the padded cipher image off the outcomes."""
    from qiskit import transpile
    from qiskit_aer import AerSimulator

    method = "statevector" if qc.num_qubits <= STATEVECTOR_MAX_QUBITS else "matrix_product_state"
    sim = AerSimulator(method=method, seed_simulator=seed)
    size = layout.side * layout.side
    result = sim.run(transpile(qc, sim), shots=SHOTS_PER_POSITION * size).result()
    if not result.success:
        raise SimulationError(f"qiskit-aer simulation failed: {result.status}")
    colour_mask = (1 << layout.colour_qubits) - 1
    words = np.zeros(size, dtype=np.uint64)
    seen = np.zeros(size, dtype=bool)
    for bits in result.get_counts():
        value = int(bits.replace(" ", ""), 2)
        index, word = value >> layout.colour_qubits, value & colour_mask
        if seen[index] and int(words[index]) != word:
            raise SimulationError(f"position {index} measured with two colours: no basis-state permutation")
        words[index], seen[index] = word, True
    if not seen.all():
        raise SimulationError(f"{int((~seen).sum())} positions never measured; raise SHOTS_PER_POSITION")
    return from_basis_states(words, layout)


def encrypt_circuit(
    image: np.ndarray,
    key: bytes,
    nonce: bytes,
    params: chaos.LorenzParams = chaos.DEFAULT_PARAMS,
    seed: int = 0,
) -> CipherImage:
    """`cipher.encrypt` computed by a qiskit-aer circuit; the result must equal the numpy path's."""
    layout = layout_of(image)
    if layout.side > MAX_SIDE:
        raise ConfigError("image", f"the circuit path takes images up to {MAX_SIDE}x{MAX_SIDE}")
    tag = image_tag(image, key, nonce)
    plan = derive_plan(layout, key, nonce, tag, params)
    data = run_circuit(build_circuit(pad(image, layout), plan), layout, seed)
    return CipherImage(data=data, shape=layout.shape, dtype=layout.dtype.name, tag=tag)
