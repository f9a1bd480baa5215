"""One round of secure aggregation, simulated message by message: SecAgg and SecAgg+.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS
2017, Fig. 4 (the honest-but-curious variant: no signatures, no ConsistencyCheck), and Bell et
al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020 (SecAgg+: the
same rounds along the edges of a sparse graph, :mod:`fedbench.secagg.graph`). Each client ``u``
holds an integer vector ``x_u`` modulo ``R = 2^b`` and the server learns only the sum of the
``x_u`` whose masked vectors arrived:

0. **AdvertiseKeys**: ``u`` sends two public keys, ``c_u^PK`` (to encrypt shares between
   clients) and ``s_u^PK`` (for the pairwise masks); the server sends each client its
   neighbours' keys. ``U1``: the clients whose keys arrived.
1. **ShareKeys**: ``u`` draws its self-mask seed ``b_u``, splits ``b_u`` and ``s_u^SK`` into
   ``t``-out-of-(neighbours + 1) Shamir shares (:mod:`fedbench.secagg.shamir`; it keeps one
   share of each), and sends each neighbour ``v`` its pair of shares encrypted under
   ``KA(c_u^SK, c_v^PK)``; the server forwards each ciphertext to its recipient. ``U2``.
2. **MaskedInputCollection**: with ``s_uv = KA(s_u^SK, s_v^PK)`` for its neighbours ``v`` in
   ``U2``, ``u`` sends (Bonawitz et al., Sec. 3.1-3.2)::

       y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)   (mod R)

   The server tells each sender which of its neighbours' ``y`` arrived. ``U3``.
3. **Unmasking**: each ``u`` still present reveals, for every client whose shares it holds,
   the share of ``b_v`` if ``v`` is in ``U3`` and the share of ``s_v^SK`` if ``v`` dropped after
   ShareKeys (never both for one ``v``: the server could then unmask ``x_v``). ``U4``. The
   server reconstructs each ``b_u`` of ``U3`` and each ``s_v^SK`` of ``U2 \\ U3``, and outputs
   ``sum_{U3} y_u - sum_{U3} PRG(b_u) -/+ PRG(s_uv)`` for each survivor ``u`` and dropped
   neighbour ``v``: the pairwise masks between survivors cancel only in this modular sum.

The server aborts (:class:`ProtocolAborted`) when fewer than ``t`` clients answer a round
(Bonawitz et al.) or, in SecAgg+, when a secret it needs has fewer than ``t`` shares among the
clients still present (its sum would otherwise be wrong).

**Simulation, not cryptography.** The key agreement ``KA`` is Diffie-Hellman in the
multiplicative group modulo the Mersenne prime ``2^127 - 1`` (the algebra of key agreement,
``KA(a, g^b) = KA(b, g^a)``, without its security: discrete logarithms in this group are within
reach), the encryption of shares is a SHA-256 keystream XOR without authentication, and the PRG
is NumPy's PCG64 seeded with a SHA-256 of the seed: none is secure, all are deterministic from
the round's seed. What is real: the masks (uniform modulo ``2^b``, cancelling only in the sum),
Shamir sharing and reconstruction, the dropout handling, and the message contents, so that
:mod:`fedbench.secagg.costs` counts every message and byte. The :class:`Server` receives only
the messages (its :attr:`Server.transcript`); the inputs stay with the :class:`Client` objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping

import numpy as np

from fedbench.secagg import costs, graph, shamir
from fedbench.secagg.shamir import PRIME

GENERATOR = 3  # of the toy Diffie-Hellman group (Z / PRIME)^*
NEVER = len(costs.PHASES)  # the dropout phase of a client that completes the round


class ProtocolAborted(RuntimeError):
    """The round cannot complete: too few clients answered, or a secret cannot be
    reconstructed. Attributes ``phase`` (a name of :data:`fedbench.secagg.costs.PHASES`),
    ``have``, ``need``."""

    def __init__(self, phase: str, have: int, need: int, what: str = "clients answered"):
        self.phase, self.have, self.need = phase, have, need
        super().__init__(f"secure aggregation aborted in {phase}: {have} {what}, "
                         f"threshold t={need}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """``bits``: ``b``, inputs and masks modulo ``2^b`` (1 to 64); ``threshold``: ``t`` of the
    Shamir sharing; ``degree``: SecAgg+'s graph degree ``k`` (None: SecAgg, every pair);
    ``sizes``: the bytes the cost model assumes."""

    bits: int
    threshold: int
    degree: int | None = None
    sizes: costs.Sizes = costs.Sizes()

    def __post_init__(self):
        if not 1 <= self.bits <= 64:
            raise ValueError(f"bits={self.bits} outside [1, 64]")
        if self.threshold < 1:
            raise ValueError(f"threshold={self.threshold} below 1")


def modulus_mask(bits: int) -> np.uint64:
    """``2^b - 1`` as ``uint64``: ``a & mask`` is ``a mod 2^b``."""
    return np.uint64((1 << bits) - 1)


def to_ring(x, bits: int) -> np.ndarray:
    """Integers (signed or not) as ``uint64`` residues modulo ``2^b`` (two's complement)."""
    return np.asarray(x).astype(np.int64).astype(np.uint64) & modulus_mask(bits)


def to_signed(z, bits: int) -> np.ndarray:
    """Residues modulo ``2^b`` as signed integers in ``[-2^(b-1), 2^(b-1))``."""
    z = np.asarray(z, np.uint64) & modulus_mask(bits)
    if bits == 64:
        return z.astype(np.int64)
    half = np.uint64(1 << (bits - 1))
    return np.where(z >= half, z.astype(np.int64) - (1 << bits), z.astype(np.int64))


def public_key(secret: int) -> int:
    """``g^secret mod p`` (toy Diffie-Hellman, module docstring)."""
    return pow(GENERATOR, secret, PRIME)


def agree(secret: int, other_public: int) -> int:
    """``KA(secret, other_public) = other_public^secret mod p``: the same for both ends."""
    return pow(other_public, secret, PRIME)


def prg(seed: int, m: int, bits: int) -> np.ndarray:
    """``m`` uniform residues modulo ``2^b`` expanded from ``seed`` (PCG64 seeded with
    SHA-256 of the seed's 16 bytes; every output bit is uniform, so the low ``b`` are)."""
    digest = hashlib.sha256(int(seed).to_bytes(16, "big")).digest()
    generator = np.random.PCG64(int.from_bytes(digest, "big"))
    return generator.random_raw(m).astype(np.uint64) & modulus_mask(bits)


@dataclasses.dataclass(frozen=True)
class Keys:
    """AdvertiseKeys' message: ``c_pk`` (for encrypting shares), ``s_pk`` (for masks)."""

    c_pk: int
    s_pk: int


@dataclasses.dataclass(frozen=True)
class Sealed:
    """An encrypted pair of shares from ``sender`` to ``recipient`` (the ids in the clear for
    routing, as in the cost model); ``body`` is opaque to the server."""

    sender: int
    recipient: int
    body: bytes


@dataclasses.dataclass(frozen=True)
class Reveal:
    """One share revealed in Unmasking: of client ``owner``'s ``secret`` (``"b"``: the
    self-mask seed, ``"sk"``: the mask key), at Shamir point ``point``."""

    owner: int
    secret: str
    point: int
    value: int


_FIELD = 16  # bytes of one field element in a sealed body (toy encoding)


def _keystream(key: int, size: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(key.to_bytes(16, "big") + counter.to_bytes(8, "big")).digest()
        counter += 1
    return out[:size]


def seal(key: int, sender: int, recipient: int, sk_share: int, b_share: int) -> Sealed:
    """``Enc(key, u || v || share(s_u^SK) || share(b_u))`` (toy: keystream XOR)."""
    plain = (sender.to_bytes(4, "big") + recipient.to_bytes(4, "big")
             + sk_share.to_bytes(_FIELD, "big") + b_share.to_bytes(_FIELD, "big"))
    body = bytes(a ^ c for a, c in zip(plain, _keystream(key, len(plain))))
    return Sealed(sender, recipient, body)


def unseal(key: int, sealed: Sealed) -> tuple[int, int]:
    """The ``(sk_share, b_share)`` of ``sealed``; checks the ids inside match the envelope."""
    plain = bytes(a ^ c for a, c in zip(sealed.body, _keystream(key, len(sealed.body))))
    sender, recipient = int.from_bytes(plain[:4], "big"), int.from_bytes(plain[4:8], "big")
    if (sender, recipient) != (sealed.sender, sealed.recipient):
        raise ValueError("a ciphertext whose ids do not match its envelope")
    return (int.from_bytes(plain[8:8 + _FIELD], "big"),
            int.from_bytes(plain[8 + _FIELD:], "big"))


def _point(client: int) -> int:
    """The Shamir point of a client's shares (non-zero)."""
    return client + 1


class Client:
    """Client ``index`` of the cohort: its input, secrets and the shares it holds never leave
    it except as the protocol's messages. ``seed``: the round's seed (its secrets are drawn from
    it and its index, so a round is reproducible)."""

    def __init__(self, index: int, settings: Settings, seed: int):
        self.index, self.settings = index, settings
        self._rng = np.random.default_rng([seed, 0x5EC466, index])
        self._c_sk = shamir.random_element(self._rng)
        self._s_sk = shamir.random_element(self._rng)
        self._b: int | None = None
        self._keys: dict[int, Keys] = {}
        self._held: dict[int, tuple[int, int]] = {}  # owner -> (sk share, b share)

    def advertise_keys(self) -> Keys:
        """Phase 0: the two public keys."""
        return Keys(public_key(self._c_sk), public_key(self._s_sk))

    def share_keys(self, keys: Mapping[int, Keys]) -> dict[int, Sealed]:
        """Phase 1: ``keys`` (each neighbour in ``U1``'s keys) -> a sealed pair of shares of
        ``s_u^SK`` and ``b_u`` per neighbour; ``u`` keeps its own pair."""
        u, t = self.index, self.settings.threshold
        self._keys = dict(keys)
        self._b = shamir.random_element(self._rng)
        holders = sorted(self._keys) + [u]
        points = [_point(v) for v in holders]
        if t > len(points):
            raise ProtocolAborted(costs.PHASES[1], len(points), t, "share holders")
        sk_shares = shamir.share(self._s_sk, t, points, self._rng)
        b_shares = shamir.share(self._b, t, points, self._rng)
        self._held[u] = (sk_shares[_point(u)], b_shares[_point(u)])
        return {v: seal(agree(self._c_sk, self._keys[v].c_pk), u, v,
                        sk_shares[_point(v)], b_shares[_point(v)]) for v in self._keys}

    def masked_input(self, x, inbox: Mapping[int, Sealed]) -> np.ndarray:
        """Phase 2: ``x`` (``[m]`` integers) and the sealed shares from its neighbours in
        ``U2`` -> ``y_u`` (module docstring), ``uint64`` residues modulo ``2^b``."""
        u, bits = self.index, self.settings.bits
        for v, sealed in inbox.items():
            if sealed.recipient != u or sealed.sender != v:
                raise ValueError(f"client {u} was handed a ciphertext for {sealed.recipient}")
            self._held[v] = unseal(agree(self._c_sk, self._keys[v].c_pk), sealed)
        y = to_ring(x, bits)
        y = y + prg(self._b, y.shape[0], bits)
        for v in sorted(inbox):
            mask = prg(agree(self._s_sk, self._keys[v].s_pk), y.shape[0], bits)
            y = y + mask if v > u else y - mask  # uint64 wraps modulo 2^64
        return y & modulus_mask(bits)

    def unmask(self, survivors: frozenset[int]) -> list[Reveal]:
        """Phase 3: ``survivors`` (its neighbours in ``U3``) -> the share of ``b_v`` for each
        held ``v`` that survived (itself included), of ``s_v^SK`` for each that dropped."""
        u = self.index
        out = []
        for v, (sk_share, b_share) in sorted(self._held.items()):
            if v == u or v in survivors:
                out.append(Reveal(v, "b", _point(u), b_share))
            else:
                out.append(Reveal(v, "sk", _point(u), sk_share))
        return out


class Server:
    """The server of one round: it sees only the messages passed to its methods (recorded in
    :attr:`transcript` as ``(phase, sender, message)``) and the public graph."""

    def __init__(self, settings: Settings, neighbours: tuple[frozenset[int], ...]):
        self.settings, self.neighbours = settings, neighbours
        self.transcript: list[tuple[str, int, object]] = []
        self.rounds: list[frozenset[int]] = []  # U1..U4
        self._keys: dict[int, Keys] = {}
        self._masked: dict[int, np.ndarray] = {}

    def _collect(self, phase: int, messages: Mapping[int, object]) -> frozenset[int]:
        senders = frozenset(messages)
        self.transcript.extend((costs.PHASES[phase], u, messages[u]) for u in sorted(senders))
        self.rounds.append(senders)
        if len(senders) < self.settings.threshold:
            raise ProtocolAborted(costs.PHASES[phase], len(senders), self.settings.threshold)
        return senders

    def advertise_keys(self, messages: Mapping[int, Keys]) -> dict[int, dict[int, Keys]]:
        """Phase 0: the keys of ``U1`` -> each sender's neighbours' keys."""
        u1 = self._collect(0, messages)
        self._keys = dict(messages)
        return {u: {v: messages[v] for v in sorted(self.neighbours[u] & u1)} for u in u1}

    def share_keys(self, messages: Mapping[int, Mapping[int, Sealed]]
                   ) -> dict[int, dict[int, Sealed]]:
        """Phase 1: each sender's ciphertexts -> each sender's inbox (from its neighbours in
        ``U2``)."""
        u2 = self._collect(1, messages)
        return {u: {v: messages[v][u] for v in sorted(self.neighbours[u] & u2)} for u in u2}

    def masked_input(self, messages: Mapping[int, np.ndarray]) -> dict[int, frozenset[int]]:
        """Phase 2: the masked vectors of ``U3`` -> each sender's neighbours in ``U3``."""
        u3 = self._collect(2, messages)
        self._masked = dict(messages)
        return {u: frozenset(self.neighbours[u] & u3) for u in u3}

    def unmask(self, messages: Mapping[int, list[Reveal]]) -> np.ndarray:
        """Phase 3: the revealed shares of ``U4`` -> the sum of ``U3``'s inputs modulo
        ``2^b`` (module docstring).

        Raises:
          ProtocolAborted: fewer than ``t`` senders, or a secret with fewer than ``t`` shares.
        """
        u4 = self._collect(3, messages)
        _, u2, u3 = self.rounds[:3]
        bits = self.settings.bits
        shares: dict[tuple[int, str], dict[int, int]] = {}
        for holder in sorted(u4):
            for reveal in messages[holder]:
                if reveal.point != _point(holder):
                    raise ValueError(f"client {holder} revealed a share that is not its own")
                shares.setdefault((reveal.owner, reveal.secret), {})[reveal.point] = reveal.value
        both = {o for o, s in shares if s == "b"} & {o for o, s in shares if s == "sk"}
        if both:  # Bonawitz et al., Sec. 4: never both secrets of one client
            raise RuntimeError(f"both secrets of clients {sorted(both)} revealed")
        m = next(iter(self._masked.values())).shape[0]
        total = np.zeros(m, np.uint64)
        for u in sorted(u3):
            total = total + self._masked[u]
            b_u = self._reconstruct(shares.get((u, "b"), {}), f"shares of b_{u}")
            total = total - prg(b_u, m, bits)
        for v in sorted(u2 - u3):
            exposed = self.neighbours[v] & u3  # survivors whose y carries a mask with v
            if not exposed:
                continue
            sk = self._reconstruct(shares.get((v, "sk"), {}), f"shares of s_{v}^SK")
            if public_key(sk) != self._keys[v].s_pk:
                raise RuntimeError(f"reconstructed s_{v}^SK does not match s_{v}^PK")
            for u in sorted(exposed):
                mask = prg(agree(sk, self._keys[u].s_pk), m, bits)
                total = total - mask if v > u else total + mask  # undo u's term for v
        return total & modulus_mask(bits)

    def _reconstruct(self, points: Mapping[int, int], what: str) -> int:
        try:
            return shamir.reconstruct(points, self.settings.threshold)
        except shamir.NotEnoughShares:
            raise ProtocolAborted(costs.PHASES[3], len(points), self.settings.threshold,
                                  what) from None


@dataclasses.dataclass(frozen=True)
class Round:
    """The outcome of :func:`run_round`.

    Attributes:
      total: ``[m]`` ``uint64``, the server's sum modulo ``2^b`` of the inputs of ``included``.
      included: ``[n]`` bool, the clients whose masked input arrived (``U3``).
      senders: ``[4, n]`` bool, who sent each phase's message (``U1`` .. ``U4``).
      up_bytes, down_bytes, up_messages, down_messages: ``[4, n]`` per phase and client
        (:mod:`fedbench.secagg.costs`); the server's are the column sums.
      transcript: everything the server received, ``(phase, sender, message)``.
    """

    total: np.ndarray
    included: np.ndarray
    senders: np.ndarray
    up_bytes: np.ndarray
    down_bytes: np.ndarray
    up_messages: np.ndarray
    down_messages: np.ndarray
    transcript: tuple

    @property
    def server_in_bytes(self) -> int:
        return int(self.up_bytes.sum())

    @property
    def server_out_bytes(self) -> int:
        return int(self.down_bytes.sum())


def neighbourhoods(n: int, settings: Settings, seed: int) -> tuple[frozenset[int], ...]:
    """The round's graph: complete (SecAgg) or the seeded Harary graph (SecAgg+)."""
    if settings.degree is None or settings.degree >= n - 1:
        return graph.complete(n)
    return graph.harary(n, settings.degree, seed)


def run_round(inputs, settings: Settings, dropout=None, seed: int = 0) -> Round:
    """One round of the protocol for the cohort's ``inputs`` (``[n, m]`` integers, taken
    modulo ``2^b``). ``dropout``: ``[n]`` ints, the phase (0-3) at which each client stops
    sending (it sends nothing from that phase on; 4 or more: it completes), default none.
    ``seed``: the round's randomness (secrets, shares, the SecAgg+ graph).

    Raises:
      ProtocolAborted: too many dropouts (module docstring).
    """
    inputs = np.asarray(inputs)
    n, m = inputs.shape
    drop = np.full(n, NEVER) if dropout is None else np.asarray(dropout)
    neighbours = neighbourhoods(n, settings, seed)
    clients = [Client(u, settings, seed) for u in range(n)]
    server = Server(settings, neighbours)

    def present(phase):
        return [u for u in range(n) if drop[u] > phase]

    keys = server.advertise_keys({u: clients[u].advertise_keys() for u in present(0)})
    out_shares = {u: clients[u].share_keys(keys[u]) for u in present(1)}
    inboxes = server.share_keys(out_shares)
    survivors = server.masked_input(
        {u: clients[u].masked_input(inputs[u], inboxes[u]) for u in present(2)})
    reveals = {u: clients[u].unmask(survivors[u]) for u in present(3)}
    total = server.unmask(reveals)

    senders = np.array([[u in s for u in range(n)] for s in server.rounds], bool)
    up = np.zeros((4, n), np.int64)
    down = np.zeros((4, n), np.int64)
    for u in range(n):
        up[:, u], down[:, u] = costs.phase_bytes(
            settings.sizes, m, settings.bits,
            keys_in=len(keys.get(u, {})), shares_out=len(out_shares.get(u, {})),
            shares_in=len(inboxes.get(u, {})), survivors_in=len(survivors.get(u, ())),
            held_out=len(reveals.get(u, ())), sent=tuple(senders[:, u]))
    up_messages = senders.astype(np.int64)
    down_messages = senders.astype(np.int64) * np.array([[1], [1], [1], [0]])
    return Round(total=total, included=senders[2].copy(), senders=senders, up_bytes=up,
                 down_bytes=down, up_messages=up_messages, down_messages=down_messages,
                 transcript=tuple(server.transcript))


def draw_dropouts(seed: int, n: int, rate: float, phases=(0, 1, 2, 3)) -> np.ndarray:
    """``[n]`` dropout phases: each client drops with probability ``rate``, independently, at
    a phase drawn uniformly from ``phases`` (default: any; ``(2,)``: after sharing its keys and
    before its masked input, the case that costs the server the most, Bonawitz et al. Sec. 7);
    the others get :data:`NEVER`."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"dropout rate {rate} outside [0, 1]")
    rng = np.random.default_rng([seed, 0xD809])
    drops = rng.random(n) < rate
    at = rng.choice(np.asarray(phases), size=n)
    return np.where(drops, at, NEVER)
