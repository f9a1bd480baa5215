"""The messages and bytes of each phase of SecAgg and SecAgg+, exactly, under stated sizes.

The protocol (Bonawitz et al., CCS 2017, Fig. 4, the honest-but-curious variant: no signatures,
no ConsistencyCheck round) has four phases, each one message from every client still present to
the server and, for the first three, one reply from the server to each sender:

* phase 0, AdvertiseKeys: up ``c_u^PK || s_u^PK``, ``2K``; down, per neighbour ``v`` that
  advertised, ``(v, c_v^PK, s_v^PK)``, ``I + 2K`` each;
* phase 1, ShareKeys: up, per neighbour ``v`` that advertised, ``v`` and
  ``Enc(u || v || share of s_u^SK || share of b_u)``, ``I + (2I + 2F + E)`` each; down, per
  neighbour ``v`` that shared, ``v`` and its ciphertext, ``3I + 2F + E`` each;
* phase 2, MaskedInputCollection: up ``y_u``, ``ceil(m b / 8)``; down, the neighbours whose
  ``y`` arrived, ``I`` each;
* phase 3, Unmasking: up, per share held (of the neighbours that shared, and of ``u``
  itself), the owner's id and one field element, ``I + F`` each; no reply.

A client's neighbours are every other cohort member in SecAgg and its ``k`` graph neighbours in
SecAgg+ (Bell et al., CCS 2020: masks and shares only along the graph's edges; each client keeps
one share of its own secrets, so it makes ``k + 1`` shares, and SecAgg is SecAgg+ with
``k = n - 1``). The server's list in phase 0 leaves out ``u``'s own keys (the paper's broadcast
echoes them; ``u`` has them), and the ids travel in the clear beside each ciphertext so the
server can route it.

Sizes (:class:`Sizes`): ``K = 32`` bytes per public key (an X25519 / compressed elliptic-curve
point), ``F = 16`` bytes per Shamir share (an element of ``F_p``, ``p = 2^127 - 1``,
:mod:`fedbench.secagg.shamir`), ``I = 4`` bytes per client id, ``E = 28`` bytes of authenticated
encryption overhead per ciphertext (AES-GCM: a 12-byte nonce and a 16-byte tag), ``b`` bits per
coordinate of the masked vector of length ``m``. Transport framing (TLS records, headers) is not
counted. With no dropouts every client has ``d`` neighbours (``d = n - 1`` or ``k``) and sends /
receives (:func:`closed_form`)::

    up   = 2K + d (3I + 2F + E) + ceil(m b / 8) + (d + 1)(I + F)
    down = d (I + 2K) + d (3I + 2F + E) + d I

in 4 messages up and 3 down, and the server receives ``n up`` and sends ``n down`` bytes:
``O(n + m)`` per client and ``O(n^2 + n m)`` at the server for SecAgg (Bonawitz et al.'s
communication costs, Sec. 7.1), ``O(k + m) = O(log n + m)`` and ``O(n log n + n m)`` for
SecAgg+ with ``k = O(log n)`` (Bell et al.'s comparison with Bonawitz et al.). Computation is
not modelled.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PHASES = ("advertise_keys", "share_keys", "masked_input", "unmasking")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Bytes of the protocol's pieces (module docstring): ``key`` (a public key), ``field``
    (a Shamir share's value), ``client_id``, ``encryption`` (a ciphertext's overhead)."""

    key: int = 32
    field: int = 16
    client_id: int = 4
    encryption: int = 28

    @property
    def ciphertext(self) -> int:
        """One encrypted pair of shares: ``u || v || share(s^SK) || share(b)`` plus overhead."""
        return 2 * self.client_id + 2 * self.field + self.encryption


def vector_bytes(m: int, bits: int) -> int:
    """A masked vector of ``m`` coordinates at ``bits`` bits each, packed: ``ceil(m b / 8)``."""
    return -(-m * bits // 8)


def phase_bytes(sizes: Sizes, m: int, bits: int, keys_in: int, shares_out: int, shares_in: int,
                survivors_in: int, held_out: int, sent: tuple[bool, bool, bool, bool]):
    """One client's ``(up, down)`` bytes per phase (``[4]`` each), from what it exchanged:
    ``keys_in`` neighbours' keys received, ``shares_out`` ciphertexts sent, ``shares_in``
    received, ``survivors_in`` neighbours listed as surviving, ``held_out`` shares revealed in
    unmasking; ``sent[i]``: whether it sent its phase-``i`` message (a reply goes only to the
    senders of that phase)."""
    routed = sizes.client_id + sizes.ciphertext
    up = np.array([2 * sizes.key, shares_out * routed, vector_bytes(m, bits),
                   held_out * (sizes.client_id + sizes.field)], np.int64)
    down = np.array([keys_in * (sizes.client_id + 2 * sizes.key), shares_in * routed,
                     survivors_in * sizes.client_id, 0], np.int64)
    mask = np.asarray(sent, bool)
    return np.where(mask, up, 0), np.where(mask, down, 0)


def closed_form(n: int, m: int, bits: int, degree: int | None = None,
                sizes: Sizes = Sizes()) -> dict[str, dict[str, int]]:
    """Bytes and messages of a round with no dropouts (module docstring), per phase and in
    total: ``client_up``/``client_down`` (each client), ``server_in``/``server_out`` (all
    clients together), and the message counts ``client_messages_up``/``_down`` and
    ``server_messages_in``/``_out``. ``degree``: SecAgg+'s ``k`` (None: SecAgg, ``k = n - 1``).
    """
    d = n - 1 if degree is None else min(degree, n - 1)
    up, down = phase_bytes(sizes, m, bits, d, d, d, d, d + 1, (True,) * 4)
    out: dict[str, dict[str, int]] = {}
    for i, phase in enumerate(PHASES):
        replies = int(i < 3)
        out[phase] = {"client_up": int(up[i]), "client_down": int(down[i]),
                      "server_in": n * int(up[i]), "server_out": n * int(down[i]),
                      "client_messages_up": 1, "client_messages_down": replies,
                      "server_messages_in": n, "server_messages_out": n * replies}
    out["total"] = {key: sum(out[p][key] for p in PHASES) for key in out[PHASES[0]]}
    return out


def phase_seconds(up_bytes, down_bytes, up_messages, down_messages, up_bps, down_bps,
                  rtt_s) -> np.ndarray:
    """Seconds of each phase (``[4]``) with the server as a barrier, in the clock of
    :mod:`fedbench.links` (each transfer one round trip plus its bits at the link's rate): the
    slowest upload of the phase, then the slowest reply. ``*_bytes``, ``*_messages``:
    ``[4, n]`` (a client with no message in a phase makes no transfer); the rates and
    ``rtt_s``: ``[n]``. Clients that dropped hold no barrier (a real server waits for a
    timeout, so this is optimistic)."""
    t_up = np.where(np.asarray(up_messages) > 0, rtt_s + 8.0 * np.asarray(up_bytes) / up_bps, 0.0)
    t_down = np.where(np.asarray(down_messages) > 0,
                      rtt_s + 8.0 * np.asarray(down_bytes) / down_bps, 0.0)
    return t_up.max(axis=1, initial=0.0) + t_down.max(axis=1, initial=0.0)
