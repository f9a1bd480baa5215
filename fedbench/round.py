"""The synchronous federated round, built from an algorithm's pieces.

One round is one pure function::

    sample the cohort -> gather its data and store entries -> local updates (vmap / lax.map over
    the cohort), each client's delta through the update transforms -> what each client sends
    -> aggregate (the algorithm's, or the privacy mechanism's release that wraps it) -> server update -> scatter the store
    -> clock, bytes and participation.

No algorithm name or flag is tested here: the algorithm (:mod:`fedbench.algorithm`) supplies
``client_context``, ``grad_adjust`` (inside the local loop), ``client_finish``, ``aggregate`` and
``server_update``; the simulator supplies the cohort sampler, the transforms and the aggregator
chosen for the privacy setting. Round ``r`` uses keys derived from ``fold_in(run_key, r)`` only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedbench import hparams
from fedbench.algorithm.base import personal_update, prepare_clients
from fedbench.compression.downlink import broadcast
from fedbench.compression.traffic import add_bits
from fedbench.local import map_over_clients
from fedbench.store import gather, scatter
from fedbench.stragglers import straggler_plan
from fedbench.task import batch_loss_fn


def federated_round(sim, state, data):
    """One round of a synchronous federated algorithm (``sim``: the round's pieces,
    :class:`fedbench.pieces.RoundPieces`, never the simulator)."""
    alg = sim.algorithm
    sample_key, clients_key = sim.round_keys(state)
    members = hparams.get(state.hparams, "members", None)  # a sub-federation's 0/1 mask
    ids, valid, overflow = sim.sample_cohort(sample_key, members, state.round)
    counts = data.train_counts[ids]
    # The run's hyper-parameters, passed explicitly to every piece: its own (a sweep
    # replica's) values where the state carries them, else the settings' constants.
    hp = {**(state.hparams or {}), "lr": hparams.get(state.hparams, "lr", sim.lr)}
    # The cohort's rows outside training only for passes that need them (IFCA's choice, the
    # personal passes); flat storage refuses those and gathers inside `with_cohort` alone.
    needs_rows = alg.client_prepare is not None or alg.personal_pass is not None
    x, y = data.cohort(ids) if needs_rows else (None, None)  # [k, N, F...]
    keys = jax.random.split(clients_key, ids.shape[0])
    epochs, keep = straggler_plan(
        sim.straggler_key(state), ids.shape[0], sim.local_epochs, sim.stragglers,
        independent=sim.independent_stragglers,
    )
    # Every sampled client downloads the model, dropped stragglers too (padding does not).
    downloads = state.downloads.at[ids].add(valid.astype(jnp.int32))
    valid = valid & keep
    entries = gather(state.store, ids, like=sim.store_template)
    received = broadcast(sim, state.params, state)  # the model as the clients decode it
    own = entries["algorithm"]
    if alg.client_prepare is not None:  # a choice before training (IFCA's cluster)
        own = prepare_clients(alg.client_prepare, sim.apply_fn, received, x, y, counts,
                              own, batch_loss_fn(data.task), sim.client_axis)
    context = alg.client_context(state.server, own) if alg.client_context is not None else None
    personal = alg.personal_pass
    if personal is not None and personal.first:  # a local pass before the main one (FedRep)
        own = personal_update(sim, received, x, y, counts,
                              keys, epochs, context, own, hp=hp)
        context = alg.client_context(state.server, own)
    round_info = sim.round_info(state)
    client = map_over_clients(
        sim.client_update, sim.client_axis,
        (None, 0, 0, 0, 0, 0, None if context is None else 0, 0, None, 0, None), mesh=sim.mesh,
        chunk=sim.client_chunk,
    )
    deltas, sent, stats, transform_states, infos = data.with_cohort(ids, lambda x, y: client(
        received, x, y, counts, keys, epochs, context, entries["transforms"], round_info, ids,
        hp))
    if personal is not None and not personal.first:  # a pass that never leaves the site (Ditto)
        own = personal_update(sim, received, x, y, counts,
                              keys, epochs, context, own, deltas, hp=hp)
    uploads, new_entries = alg.client_finish(deltas, stats, own, state.server, valid, hp)
    uploads = {**uploads, "delta": sent}
    overflow = state.overflow + overflow + jnp.sum(jnp.where(valid, stats.overflow, 0))
    participation = state.participation.at[ids].add(valid.astype(jnp.int32))
    # DP-SGD's accountant counts the steps each client actually took (partial stragglers).
    dp_steps = (None if state.dp_steps is None
                else state.dp_steps.at[ids].add(jnp.where(valid, stats.num_steps, 0)))
    # Compressed uploads: the exact encoded bits of every message that counted.
    bits_up = None if state.bits_up is None else add_bits(state.bits_up, infos["bits"], valid)
    weights = jnp.where(valid, counts, 0)
    aggregates, private = sim.aggregate(state, uploads, weights, stats, valid, infos)
    durations = sim.durations(ids, counts, epochs, sim.upload_bits(infos))
    clock = state.clock + jnp.max(jnp.where(valid, durations, 0.0))  # the slowest kept client
    params, opt_state, server = alg.server_update(
        state.params, state.opt_state, state.server, aggregates, alg.server_optimizer, hp
    )
    store = scatter(state.store, ids, {"algorithm": new_entries, "transforms": transform_states},
                    valid)
    return state.replace(
        params=params, opt_state=opt_state, round=state.round + 1, overflow=overflow,
        participation=participation, store=store, server=server, clock=clock,
        dp_steps=dp_steps, downloads=downloads, bits_up=bits_up,
        **private,  # the privacy mechanism's own state (e.g. an adaptive clip)
    )
