"""The Flower apps: one ServerApp and one ClientApp that run ``flu.run``'s round with Flower messages.

``flu.run`` plays a round as four calls (``engine.runner``): **broadcast** x, **local update**
on each selected client, **aggregate** the deltas, **server update**. Here the same four calls
are split between the two apps, and Flower's ``Message`` carries what crosses:

====================  =======================================  ==========================================
round step            ``flu.run`` (one process)                the bridge
====================  =======================================  ==========================================
select clients        ``select_clients(N, K, p, ...)``         the same call, in the ServerApp
broadcast             x (and SCAFFOLD's c) to the selected     :func:`broadcast`: one ``train`` Message per
                      clients                                   SuperNode: ArrayRecords ``x``, ``server``,
                                                                ConfigRecord ``round`` (round, clients, steps)
local update          ``Algorithm.client_update`` on the        :func:`local_update` in the ClientApp: the same
                      stacked clients (``LocalRound``)          call on the SuperNode's own selected clients,
                                                                whose state (c_i, g_i) lives in ``Context.state``
aggregate             deltas with the sampling weights w_i      :func:`aggregate`: replies put back in the
                                                                round's client order; weights renormalised over
                                                                the clients whose SuperNode replied
server update         ``Algorithm.server_update``               :func:`server_update`: the same call
====================  =======================================  ==========================================

Clients are dealt to SuperNodes round-robin (client i on the SuperNode with partition id
``i % supernodes``). Minibatches come from the seeded per-(seed, round, client) streams
(``engine.sampling``), so a SuperNode computing its own clients draws exactly what ``flu.run``
draws for them, and the final parameters agree with ``flu.run``'s to rounding.

Evaluation stays on the ServerApp (the server holds the test splits, as in ``flu.run``), so
``History.metrics`` matches ``flu.run``'s row for row.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from .. import algorithms as algs
from ..engine.history import METRIC_COLUMNS
from ..engine.runner import Setup, State
from ..engine.sampling import select_clients
from ..engine.training import LocalRound
from .spec import node_name, owner

STATE_KEY = "flu.client_state"   # the ClientApp's Context.state record of its clients' algorithm state
TRAIN, QUERY = "train", "query"


# ------------------------------------------------------------------------ records <-> tensors

def to_record(tensors: dict):
    """An ``ArrayRecord`` of torch tensors (numpy bytes on the wire: dtype and values exact)."""
    from flwr.app import Array, ArrayRecord
    rec = ArrayRecord()
    for k, v in tensors.items():
        rec[k] = Array(np.ascontiguousarray(v.detach().cpu().numpy()))
    return rec


def from_record(rec, order=None) -> dict:
    """Torch tensors from an ``ArrayRecord`` (in ``order`` when given)."""
    keys = list(rec.keys()) if order is None else [k for k in order if k in rec]
    return {k: torch.from_numpy(np.array(rec[k].numpy())) for k in keys}


# ------------------------------------------------------------------------ the run's pieces

def pieces(got: dict):
    """``(cfg, setup)`` of the spec in ``got`` (spec.Handle.get()), built once per process with the
    engine's own ``configure`` and ``Setup.build``."""
    if "setup" not in got:
        from ..engine.config import configure
        spec = got["spec"]
        cfg = configure(spec.model, spec.federation, systems=None, privacy=None, compression=None,
                        diagnostics=False, checkpoint=None, checkpoint_every=1, resume=None,
                        options=dict(spec.options), **spec.kwargs)
        got["cfg"], got["setup"] = cfg, Setup.build(cfg, spec.model, spec.federation)
    return got["cfg"], got["setup"]


# ======================================================================== the ClientApp

def client_app(source):
    """The ClientApp: ``train`` messages run :func:`local_update`; ``query`` messages say who
    the SuperNode is (used to name the SuperNodes that did not connect). ``source(context)``
    gives the run (``spec.Handle``, or the spec file named in the run config)."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg, context):
        return Message(local_update(msg.content, context, source(context)), reply_to=msg)

    @app.query()
    def query(msg, context):
        part, _, name = identity(context)
        return Message(RecordDict({"meta": ConfigRecord({"partition": part, "name": name})}), reply_to=msg)

    return app


def identity(context) -> tuple:
    """(partition id, number of partitions, name) of the SuperNode running ``context``."""
    cfg = context.node_config
    part = int(cfg.get("partition-id", 0))
    return part, int(cfg.get("num-partitions", 1)), str(cfg.get("name", node_name(part)))


def local_update(content, context, got: dict):
    """Step 2 of the round on one SuperNode: its own selected clients run the algorithm's client
    rule (``Algorithm.client_update``) from the broadcast x, exactly as ``flu.run`` runs it on the
    stacked selected clients (``LocalRound``: the same seeded minibatches, steps and rates).
    Returns the reply: stacked deltas, uploads, the clients' new state, and who they are."""
    from flwr.app import ConfigRecord, RecordDict
    cfg, setup = pieces(got)
    if got["spec"].engine != "inprocess" and torch.get_num_threads() != 1:
        torch.set_num_threads(1)   # a ClientApp process or Ray actor on a shared CPU: tiny models, one thread
    alg, names = cfg.algorithm, list(setup.plan.server)
    part, S, name = identity(context)
    meta = content["round"]
    rnd, clients, steps = int(meta["round"]), list(meta["clients"]), list(meta["steps"])
    mine = [i for i, c in enumerate(clients) if owner(c, S) == part]
    out = {"meta": ConfigRecord({"clients": [clients[i] for i in mine], "partition": part, "name": name,
                                 "seconds": 0.0, "steps": 0})}
    if not mine:
        return RecordDict(out)
    x = from_record(content["x"], names)
    server_state = from_record(content["server"])
    sel = torch.tensor([clients[i] for i in mine], dtype=torch.long)
    tau = torch.tensor([steps[i] for i in mine], dtype=torch.long)
    rows = _state_rows(context, alg, x, cfg.options, sel)
    train = LocalRound(setup, x, rnd, sel, tau)
    result = alg.client_update(algs.ClientRound(x, rows, server_state, tau, train.lr_sum, cfg.options, train,
                                                train.grad, train.hvp, setup.head, tuple(train.lrs)))
    _keep_state(context, sel, result.state)
    out.update(delta=to_record({k: result.delta[k] for k in names if k in result.delta}),
               upload=to_record(result.upload), state=to_record(result.state))
    out["meta"]["seconds"], out["meta"]["steps"] = float(train.seconds), len(train.lrs)
    return RecordDict(out)


def _state_rows(context, alg, x, options, sel) -> dict:
    """The clients' algorithm state (SCAFFOLD's c_i, FedDyn's g_i), stacked, from ``Context.state``
    (initialised with ``Algorithm.init_client`` the first time a client trains)."""
    template = alg.init_client(x, options)
    if not template:
        return {}
    stored = context.state[STATE_KEY] if STATE_KEY in context.state else None
    rows = {k: [] for k in template}
    for c in sel.tolist():
        for k, v in template.items():
            key = f"{c}/{k}"
            rows[k].append(torch.from_numpy(np.array(stored[key].numpy())) if stored is not None and key in stored
                           else v.clone())
    return {k: torch.stack(v) for k, v in rows.items()}


def _keep_state(context, sel, new_state: dict) -> None:
    if not new_state:
        return
    from flwr.app import Array, ArrayRecord
    rec = context.state[STATE_KEY] if STATE_KEY in context.state else ArrayRecord()
    for k, v in new_state.items():
        for row, c in zip(v, sel.tolist()):
            rec[f"{c}/{k}"] = Array(np.ascontiguousarray(row.detach().cpu().numpy()))
    context.state[STATE_KEY] = rec


# ======================================================================== the ServerApp

class Hooks:
    """What the engine around the ServerApp does between rounds (fault injection, progress)."""

    progress = True

    def after_round(self, rnd: int) -> None:
        pass


def server_app(source, hooks: Hooks, result: dict):
    """The ServerApp: :func:`serve`, its History (or error) left in ``result``."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context):
        try:
            result["history"] = serve(grid, source(context), hooks)
        except BaseException as err:   # handed to the caller, who re-raises it
            result["error"] = err
            raise

    return app


def serve(grid, got: dict, hooks: Hooks):
    """The server's side of the run: wait for the SuperNodes, then ``num_rounds`` rounds of
    broadcast / (remote) local update / aggregate / server update, each evaluated and committed
    as ``flu.run`` does. Returns the History (the run's tables, plus who took part per round)."""
    spec = got["spec"]
    cfg, setup = pieces(got)
    state = State.start(setup)
    run = _Run(spec, setup, state)
    run.absent = await_supernodes(grid, spec)
    from tqdm.auto import tqdm
    bar = tqdm(range(1, cfg.num_rounds + 1), disable=not (cfg.progress and hooks.progress),
               desc=f"{cfg.algorithm.label or cfg.algorithm.name} on Flower ({spec.engine})", leave=False)
    try:
        for rnd in bar:
            play_round(grid, run, rnd)
            hooks.after_round(rnd)
    except (Exception, KeyboardInterrupt) as err:   # the completed rounds travel with the error, as in flu.run
        err.history = run.history()
        raise
    return run.history()


class _Run:
    """The server's bookkeeping: the engine's State plus who took part in each round."""

    def __init__(self, spec, setup, state):
        self.spec, self.setup, self.state = spec, setup, state
        self.known = {}     # Flower node id -> SuperNode name, learned from replies
        self.absent = []    # SuperNodes that never connected

    def history(self):
        hist = self.state.history()
        hist.config.update(self.spec.describe())
        return hist


def await_supernodes(grid, spec) -> list:
    """Wait until all ``supernodes`` SuperNodes are connected, at most ``connect_timeout`` seconds.
    Fewer than ``min_supernodes`` -> TimeoutError naming the missing ones; fewer than all -> a
    warning naming them, and the run goes on. Returns the names of the missing ones."""
    deadline = time.monotonic() + spec.connect_timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= spec.supernodes:
            return []
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    present = identify(grid, nodes, spec.round_timeout)   # a SuperNode answers within a round's time
    missing = [n for n in spec.names() if n not in present]
    text = (f"SuperNodes {missing} did not connect within connect_timeout={spec.connect_timeout:g} s "
            f"({len(nodes)} of {spec.supernodes} connected: {sorted(present)})")
    if len(nodes) < spec.min_supernodes:
        raise TimeoutError(f"{text}; min_supernodes={spec.min_supernodes}")
    warnings.warn(f"{text}; the run goes on without them (min_supernodes={spec.min_supernodes})", stacklevel=2)
    return missing


def identify(grid, nodes, timeout) -> dict:
    """SuperNode name -> node id of the connected ``nodes`` (one ``query`` message each)."""
    from flwr.app import Message, RecordDict
    replies = grid.send_and_receive([Message(RecordDict(), dst_node_id=n, message_type=QUERY) for n in nodes],
                                    timeout=timeout)
    return {str(m.content["meta"]["name"]): m.metadata.src_node_id for m in replies if not m.has_error()}


# ---------------------------------------------------------------------------- one round

def broadcast(grid, nodes, x: dict, server_state: dict, rnd: int, sel, steps) -> list:
    """Step 1: one ``train`` Message per connected SuperNode with x, the server state the
    algorithm broadcasts (SCAFFOLD's c) and the round's selection (each SuperNode trains the
    selected clients it hosts)."""
    from flwr.app import ConfigRecord, Message, RecordDict
    meta = {"round": int(rnd), "clients": [int(c) for c in sel.tolist()], "steps": [int(s) for s in steps.tolist()]}
    return [Message(RecordDict({"x": to_record(x), "server": to_record(server_state), "round": ConfigRecord(meta)}),
                    dst_node_id=n, message_type=TRAIN, group_id=str(rnd)) for n in nodes]


def aggregate(replies, sel, agg_w, order) -> dict:
    """Step 3: the replies' stacked deltas, uploads and new client state put back in the round's
    client order; the sampling weights of the clients whose SuperNode replied, renormalised to the
    same total when some did not (as ``flu.run`` does for clients that drop out)."""
    got = {}
    for m in replies:
        clients = list(m.content["meta"]["clients"])
        if not clients:
            continue
        parts = {key: from_record(m.content[key], order if key == "delta" else None)
                 for key in ("delta", "upload", "state")}
        for i, c in enumerate(clients):
            got[int(c)] = {key: {k: v[i] for k, v in part.items()} for key, part in parts.items()}
    done = torch.tensor([c in got for c in sel.tolist()], dtype=torch.bool)
    rows = [got[c] for c in sel[done].tolist()]
    stack = lambda key: {k: torch.stack([r[key][k] for r in rows]) for k in (rows[0][key] if rows else {})}
    w = agg_w[done]
    if len(w) and not bool(done.all()):
        w = w * (agg_w.sum() / w.sum())
    return dict(done=done, delta=stack("delta"), upload=stack("upload"), state=stack("state"), weights=w)


def server_update(setup, state, agg: dict, sel, steps):
    """Step 4: the algorithm's server rule (``Algorithm.server_update``) on the aggregate, as in
    ``flu.run``; the parameters unchanged when no client's update arrived."""
    cfg, done = setup.cfg, agg["done"]
    K = int(done.sum())
    if not K:
        return state.x, state.server_state
    dtype = setup.dtype
    sel_c = sel[done]
    return cfg.algorithm.server_update(algs.ServerRound(
        state.x, state.server_state, agg["delta"], agg["upload"], agg["weights"].to(dtype), setup.p[sel_c].to(dtype),
        steps[done], cfg.server_lr, cfg.options, len(setup.sizes), sel_c, torch.ones(K, dtype=torch.bool),
        setup.head))


def play_round(grid, run: _Run, rnd: int) -> None:
    """Round ``rnd``: select, broadcast, wait for the replies (at most ``round_timeout`` s),
    aggregate, update, evaluate; committed to the state only when all of it succeeded."""
    spec, setup, state = run.spec, run.setup, run.state
    cfg, alg, N = setup.cfg, setup.cfg.algorithm, len(setup.sizes)
    t0 = time.perf_counter()
    sel, agg_w = select_clients(N, cfg.clients_per_round, setup.p, cfg.sampling, cfg.seed, rnd)
    steps = setup.steps[sel]
    order = list(setup.plan.server)
    nodes, replies, errors = [], [], {}
    if len(sel):
        nodes = sorted(grid.get_node_ids())
        msgs = broadcast(grid, nodes, state.x, {k: state.server_state[k] for k in alg.broadcast}, rnd, sel, steps)
        for m in grid.send_and_receive(msgs, timeout=spec.round_timeout):
            if m.has_error():   # the reason's last line: the exception of a ClientApp that raised
                lines = [ln.strip() for ln in (m.error.reason or "").splitlines() if ln.strip()]
                errors[m.metadata.src_node_id] = (lines[-1][:200] if lines else f"error code {m.error.code}")
            else:
                run.known[m.metadata.src_node_id] = str(m.content["meta"]["name"])
                replies.append(m)
    replied = sorted({str(m.content["meta"]["name"]) for m in replies}, key=lambda n: int(n.rsplit("-", 1)[-1]))
    missing = [n for n in spec.names() if n not in replied] if len(sel) else []
    if len(sel) and len(replied) < spec.min_supernodes:
        why = {run.known[i]: r for i, r in errors.items() if i in run.known}
        detail = ", ".join(f"{n} ({why.get(n, f'no reply within round_timeout={spec.round_timeout:g} s')})"
                           for n in missing)
        unnamed = [f"node {i}: {r}" for i, r in errors.items() if i not in run.known]
        detail += f"; errors from SuperNodes not yet identified: {'; '.join(unnamed)}" if unnamed else ""
        raise RuntimeError(f"round {rnd}: {len(replied)} of {spec.supernodes} SuperNodes replied, fewer than "
                           f"min_supernodes={spec.min_supernodes}; missing: {detail}")
    agg = aggregate(replies, sel, agg_w, order)
    x_new, server_state = server_update(setup, state, agg, sel, steps)
    if not all(bool(torch.isfinite(v).all()) for v in x_new.values()):
        raise FloatingPointError(f"round {rnd}: the global parameters became NaN or infinite (training "
                                 f"diverged); try a smaller client_lr (now {cfg.lr(rnd, 0):g}) or server_lr")
    x_new = {k: x_new[k] for k in setup.plan.server}
    done = agg["done"]
    K, selected = int(done.sum()), len(sel)
    evaluate = rnd % cfg.eval_every == 0 or rnd == cfg.num_rounds
    current = setup.full(x_new) if (cfg.record_params or evaluate) else None
    rows = {c: [] for c in METRIC_COLUMNS}
    if evaluate:
        setup.evaluator(current, rnd, rows)
    # ---- commit
    for k, v in agg["state"].items():
        state.client_state[k][sel[done]] = v.to(state.client_state[k].dtype)
    state.x, state.server_state = x_new, server_state
    for c in METRIC_COLUMNS:
        state.rows[c].extend(rows[c])
    down_extra = sum(server_state[k].numel() * server_state[k].element_size() for k in alg.broadcast) * selected
    bytes_up = K * setup.up_bytes + sum(v.numel() * v.element_size() for v in agg["upload"].values())
    state.round_rows.append(dict(
        round=rnd, clients_selected=selected, clients_completed=K, bytes_up=bytes_up,
        bytes_down=selected * setup.down_bytes + down_extra, trainable_params=setup.trainable_count,
        supernodes_sent=len(nodes), supernodes_replied=len(replied), participants=sel[done].tolist(),
        supernodes_missing=missing))
    if cfg.record_params:
        state.trajectory.append(current)
    local = sum(float(m.content["meta"]["seconds"]) for m in replies)
    most = max([int(m.content["meta"]["steps"]) for m in replies] or [0])
    state.timing_rows.append(dict(round=rnd, seconds=time.perf_counter() - t0, local_seconds=local,
                                  seconds_per_step=local / most if most else math.nan))
    state.completed = rnd

