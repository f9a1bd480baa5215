"""Secure aggregation simulated (fedbench/secagg, issue 32 item 1).

Independent expectations: the plain sum of the inputs of the clients whose masked vectors
arrived, computed here with NumPy; the abort condition worked out here from the dropout
pattern and the (public) graph; the bytes of each phase computed by hand from the sizes the
cost model states (K = 32-byte keys, F = 16-byte shares, I = 4-byte ids, E = 28 bytes of
AES-GCM overhead), not by calling the code's helpers; the masked vectors' uniformity by a
chi-squared test.
"""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import stats

from fedbench.secagg import (NEVER, ProtocolAborted, Settings, closed_form, draw_dropouts,
                             phase_seconds, run_round, to_signed)
from fedbench.secagg import graph, shamir
from fedbench.secagg.protocol import Keys, Reveal, Sealed, Server, neighbourhoods

K, F, I, E = 32, 16, 4, 28  # bytes: public key, share, client id, AES-GCM nonce + tag

# ---------------------------------------------------------------------------- Shamir


def test_shamir_any_t_shares_reconstruct():
    rng = np.random.default_rng(0)
    secret = shamir.random_element(rng)
    shares = shamir.share(secret, 3, range(1, 6), rng)
    for subset in itertools.combinations(shares, 3):
        assert shamir.reconstruct({x: shares[x] for x in subset}, 3) == secret
    assert shamir.reconstruct(shares, 3) == secret  # more than t: any t of them


def test_shamir_fewer_than_t_shares_fail_and_reveal_nothing():
    rng = np.random.default_rng(1)
    shares = shamir.share(12345, 3, range(1, 6), rng)
    with pytest.raises(shamir.NotEnoughShares):
        shamir.reconstruct({1: shares[1], 2: shares[2]}, 3)
    # interpolating the two shares as if t were 2 gives a wrong secret: the refusal matters
    assert shamir.reconstruct({1: shares[1], 2: shares[2]}, 2) != 12345


def test_shamir_threshold_one_and_validation():
    rng = np.random.default_rng(2)
    shares = shamir.share(7, 1, [1, 2, 3], rng)
    assert set(shares.values()) == {7}  # degree 0: every share is the secret
    with pytest.raises(ValueError):
        shamir.share(7, 4, [1, 2, 3], rng)
    with pytest.raises(ValueError):
        shamir.share(7, 2, [0, 1], rng)
    with pytest.raises(ValueError):
        shamir.share(7, 2, [1, 1], rng)
    with pytest.raises(ValueError):
        shamir.share(shamir.PRIME, 2, [1, 2], rng)


# ---------------------------------------------------------------------------- correctness


def expected_abort(n, t, degree, drop, seed):
    """Whether the protocol must abort, worked out from the dropout pattern and the graph."""
    nb = neighbourhoods(n, Settings(bits=8, threshold=t, degree=degree), seed)
    u = [{c for c in range(n) if drop[c] > phase} for phase in range(4)]  # U1..U4
    if any(len(s) < t for s in u):
        return True
    if any(len(nb[c] & u[0]) + 1 < t for c in u[1]):  # too few holders for its shares
        return True
    if any(len((nb[c] | {c}) & u[3]) < t for c in u[2]):  # b_c of a survivor
        return True
    return any(len(nb[c] & u[3]) < t for c in u[1] - u[2] if nb[c] & u[2])  # s_c^SK


@st.composite
def rounds(draw):
    n = draw(st.integers(3, 8))
    plus = draw(st.booleans())
    if plus:
        degree = draw(st.sampled_from([k for k in range(2, n - 1) if k % 2 == 0 or n % 2 == 0]
                                      or [n - 1]))
    else:
        degree = None
    holders = (n if degree is None else degree + 1)
    t = draw(st.integers(1, holders))
    bits = draw(st.sampled_from([4, 11, 32, 64]))
    m = draw(st.integers(1, 5))
    drop = draw(st.lists(st.sampled_from([0, 1, 2, 3] + [NEVER] * 6), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**16))
    return n, degree, t, bits, m, drop, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_modular_sum_equals_plain_sum_under_dropouts(case):
    n, degree, t, bits, m, drop, seed = case
    rng = np.random.default_rng(seed)
    high = max(1, (1 << bits) // n) if bits < 64 else 1 << 40  # no overflow of the sum
    x = rng.integers(0, high, size=(n, m), dtype=np.int64)
    cfg = Settings(bits=bits, threshold=t, degree=degree)
    if expected_abort(n, t, degree, drop, seed):
        event("aborts")
        with pytest.raises(ProtocolAborted):
            run_round(x, cfg, dropout=drop, seed=seed)
        return
    event("completes")
    result = run_round(x, cfg, dropout=drop, seed=seed)
    included = np.array([d > 2 for d in drop])  # sent its masked input
    np.testing.assert_array_equal(result.included, included)
    np.testing.assert_array_equal(result.total.astype(np.int64), x[included].sum(axis=0))


def test_signed_inputs_sum_in_twos_complement():
    rng = np.random.default_rng(3)
    x = rng.integers(-20, 20, size=(6, 7))
    result = run_round(x, Settings(bits=10, threshold=3), dropout=[NEVER, 2, NEVER, 3, 1, NEVER])
    np.testing.assert_array_equal(to_signed(result.total, 10), x[[0, 2, 3, 5]].sum(axis=0))


def test_overflow_wraps_modulo_2_to_the_b():
    x = np.full((4, 3), 200)
    result = run_round(x, Settings(bits=8, threshold=2))
    np.testing.assert_array_equal(result.total, np.full(3, 800 % 256))


# ---------------------------------------------------------------------------- aborts


@pytest.mark.parametrize("drop, phase, have", [
    ([0, 0, 0, NEVER, NEVER], "advertise_keys", 2),
    ([NEVER, 1, 1, 1, NEVER], "share_keys", 2),
    ([NEVER, 2, 2, NEVER, 0], "masked_input", 2),
    ([NEVER, 3, 2, 3, NEVER], "unmasking", 2),
])
def test_too_many_dropouts_abort(drop, phase, have):
    x = np.ones((5, 4), np.int64)
    with pytest.raises(ProtocolAborted) as error:
        run_round(x, Settings(bits=16, threshold=3), dropout=drop)
    assert (error.value.phase, error.value.have, error.value.need) == (phase, have, 3)


def test_exactly_threshold_survivors_complete():
    x = np.arange(20).reshape(5, 4)
    # U3 = {0, 2, 3} and all three unmask: exactly t
    result = run_round(x, Settings(bits=16, threshold=3), dropout=[NEVER, 2, NEVER, NEVER, 1])
    np.testing.assert_array_equal(result.total, x[[0, 2, 3]].sum(axis=0))
    # client 2 sends y and then drops: its input counts, its b_2 comes from the others' shares
    result = run_round(x, Settings(bits=16, threshold=3), dropout=[NEVER, 2, 3, NEVER, NEVER])
    np.testing.assert_array_equal(result.total, x[[0, 2, 3, 4]].sum(axis=0))


def test_secagg_plus_aborts_when_a_neighbourhood_loses_its_shares():
    n, k, t = 8, 2, 2
    nb = graph.harary(n, k, seed=5)
    survivor = 0
    drop = [NEVER] * n
    for v in nb[survivor]:
        drop[v] = 3  # its two neighbours send their masked inputs, then drop
    drop[survivor] = 3  # and so does it: b_0 has no share left among those present
    with pytest.raises(ProtocolAborted, match="b_0"):
        run_round(np.ones((n, 2), np.int64), Settings(bits=8, threshold=t, degree=k),
                  dropout=drop, seed=5)


# ---------------------------------------------------------------------------- what the server sees


def test_server_receives_only_messages_never_an_input():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 1 << 16, size=(6, 50))
    result = run_round(x, Settings(bits=16, threshold=3), dropout=[NEVER, 2, NEVER, 3, NEVER, 1])
    kinds = {"advertise_keys": Keys, "share_keys": dict, "masked_input": np.ndarray,
             "unmasking": list}
    for phase, sender, message in result.transcript:
        assert isinstance(message, kinds[phase])
        if phase == "share_keys":
            assert all(isinstance(s, Sealed) and s.sender == sender for s in message.values())
        if phase == "unmasking":
            assert all(isinstance(r, Reveal) for r in message)
            assert {r.secret for r in message if r.owner == 1} == {"sk"}  # dropped before y
            assert {r.secret for r in message if r.owner != 1} <= {"b"}
        if phase == "masked_input":
            for u in range(6):
                assert not np.array_equal(message, x[u])
    # the server's methods take messages only: no input, no client object
    for name in ("advertise_keys", "share_keys", "masked_input", "unmask"):
        assert list(inspect.signature(getattr(Server, name)).parameters) == ["self", "messages"]
    # without the unmasking shares the masked vectors do not sum to the inputs' sum
    masked = sum(msg for phase, _, msg in result.transcript if phase == "masked_input")
    assert not np.array_equal(masked & np.uint64(0xFFFF), result.total)


def test_masked_vector_is_uniform_and_uncorrelated_with_the_input():
    m, bits = 40_000, 8
    rng = np.random.default_rng(6)
    structured = np.zeros((3, m), np.int64)  # a constant input: its mask must hide it
    random = rng.integers(0, 1 << bits, size=(3, m))
    for x in (structured, random):
        result = run_round(x, Settings(bits=bits, threshold=2), seed=7)
        y = next(msg for phase, u, msg in result.transcript if phase == "masked_input" and u == 0)
        counts = np.bincount(y.astype(np.int64), minlength=1 << bits)
        assert stats.chisquare(counts).pvalue > 1e-3
        if x is random:
            r = np.corrcoef(y.astype(np.float64), x[0].astype(np.float64))[0, 1]
            assert abs(r) < 4 / np.sqrt(m)


# ---------------------------------------------------------------------------- costs


def test_secagg_costs_by_hand_no_dropouts():
    n, m, bits = 4, 10, 12
    up = [2 * K,                              # c_pk, s_pk
          3 * (I + 2 * I + 2 * F + E),        # 3 routed ciphertexts: 72 bytes each
          -(-m * bits // 8),                  # 15 bytes of y
          4 * (I + F)]                        # shares of b for all 4 (itself included)
    down = [3 * (I + 2 * K), 3 * (I + 2 * I + 2 * F + E), 3 * I, 0]
    assert up == [64, 216, 15, 80] and down == [204, 216, 12, 0]
    result = run_round(np.ones((n, m), np.int64), Settings(bits=bits, threshold=3))
    np.testing.assert_array_equal(result.up_bytes, np.tile(np.array(up)[:, None], (1, n)))
    np.testing.assert_array_equal(result.down_bytes, np.tile(np.array(down)[:, None], (1, n)))
    assert result.server_in_bytes == 1500 and result.server_out_bytes == 1728
    assert result.up_messages.sum() == 16 and result.down_messages.sum() == 12
    form = closed_form(n, m, bits)
    assert form["total"]["client_up"] == 375 and form["total"]["client_down"] == 432
    assert form["total"]["server_in"] == 1500 and form["total"]["server_out"] == 1728
    assert form["total"]["server_messages_in"] == 16
    assert form["total"]["server_messages_out"] == 12


def test_secagg_costs_by_hand_with_a_dropout():
    # client 3 drops after ShareKeys: it sends keys and shares, then nothing
    n, m, bits = 4, 10, 12
    result = run_round(np.ones((n, m), np.int64), Settings(bits=bits, threshold=3),
                       dropout=[NEVER, NEVER, NEVER, 2])
    for u in range(3):
        assert list(result.up_bytes[:, u]) == [64, 216, 15, 4 * 20]  # 3 held shares + its own
        assert list(result.down_bytes[:, u]) == [204, 216, 2 * 4, 0]  # 2 surviving neighbours
    assert list(result.up_bytes[:, 3]) == [64, 216, 0, 0]
    assert list(result.down_bytes[:, 3]) == [204, 216, 0, 0]
    assert result.server_in_bytes == 3 * 375 + 64 + 216
    assert result.server_out_bytes == 3 * (204 + 216 + 8) + 204 + 216


def test_secagg_plus_graph_is_k_regular():
    for n, k in [(6, 2), (9, 4), (10, 3), (12, 5), (7, 6)]:
        nb = graph.harary(n, k, seed=11)
        assert all(len(s) == k and u not in s for u, s in enumerate(nb))
        assert all(u in nb[v] for u, s in enumerate(nb) for v in s)  # undirected
    with pytest.raises(ValueError):
        graph.harary(7, 3, seed=0)  # no 3-regular graph on 7 nodes
    with pytest.raises(ValueError):
        graph.harary(5, 5, seed=0)


def test_secagg_plus_costs_scale_with_k_not_n():
    k, m, bits = 4, 10, 12
    per_client = (2 * K + k * 72 + 15 + (k + 1) * (I + F),
                  k * (I + 2 * K) + k * 72 + k * I)
    for n in (10, 20):
        result = run_round(np.ones((n, m), np.int64), Settings(bits=bits, threshold=3, degree=k))
        assert set(result.up_bytes.sum(axis=0)) == {per_client[0]}
        assert set(result.down_bytes.sum(axis=0)) == {per_client[1]}
    big = closed_form(1000, m, bits, degree=k)["total"]
    assert (big["client_up"], big["client_down"]) == per_client
    assert big["server_in"] == 1000 * per_client[0]
    # SecAgg: each further client adds 72 + 20 bytes up and 68 + 72 + 4 down per client
    small, large = closed_form(10, m, bits)["total"], closed_form(20, m, bits)["total"]
    assert large["client_up"] - small["client_up"] == 10 * 92
    assert large["client_down"] - small["client_down"] == 10 * 144


def test_phase_seconds_by_hand():
    up = np.array([[100, 200], [0, 0], [1000, 0], [10, 10]])
    down = np.array([[50, 50], [0, 0], [0, 0], [0, 0]])
    sent_up = np.array([[1, 1], [0, 0], [1, 0], [1, 1]])
    sent_down = np.array([[1, 1], [0, 0], [0, 0], [0, 0]])
    up_bps, down_bps = np.array([800.0, 1600.0]), np.array([400.0, 400.0])
    rtt = np.array([1.0, 2.0])
    seconds = phase_seconds(up, down, sent_up, sent_down, up_bps, down_bps, rtt)
    # phase 0: uploads 1 + 1 = 2 s and 2 + 1 = 3 s, replies 1 + 1 = 2 s and 2 + 1 = 3 s
    np.testing.assert_allclose(seconds, [3 + 3, 0, 1 + 10, max(1 + 0.1, 2 + 0.05)])


def test_draw_dropouts():
    assert list(draw_dropouts(0, 5, 0.0)) == [NEVER] * 5
    drops = draw_dropouts(1, 1000, 1.0, phases=(2,))
    assert set(drops) == {2}
    drops = draw_dropouts(2, 20_000, 0.25)
    assert abs(np.mean(drops < NEVER) - 0.25) < 0.02
    np.testing.assert_array_equal(drops, draw_dropouts(2, 20_000, 0.25))


def test_every_dropout_pattern_of_a_small_cohort():
    """SecAgg, n = 4, t = 2: all 5^4 patterns (each client drops at one of the four phases or
    never); the round completes exactly when at least t clients unmask, with the plain sum."""
    n, t = 4, 2
    x = np.arange(1, 4 * n + 1).reshape(n, 4)
    cfg = Settings(bits=8, threshold=t)
    for drop in itertools.product(range(NEVER + 1), repeat=n):
        unmasking = sum(d > 3 for d in drop)
        if unmasking < t:
            with pytest.raises(ProtocolAborted):
                run_round(x, cfg, dropout=drop)
            continue
        included = np.array([d > 2 for d in drop])
        np.testing.assert_array_equal(run_round(x, cfg, dropout=drop).total,
                                      x[included].sum(axis=0))
