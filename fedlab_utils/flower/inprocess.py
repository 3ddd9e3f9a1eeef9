"""``engine="inprocess"``: the ServerApp and the ClientApp driven in this process, without Ray
and without network: a Flower ``Grid`` whose SuperNodes are ``Context`` objects here.

Messages are real ``flwr.app.Message`` objects (their ArrayRecords hold the arrays as the bytes
that travel), each SuperNode keeps its ``Context.state`` across rounds as a SuperNode does, and
a ClientApp that raises answers with an error Message, as Flower's runtimes do. Fault
injection: a SuperNode killed after a round stops answering; an offline one never registers.
"""
from __future__ import annotations

import itertools
import traceback

from .apps import Hooks, client_app, server_app
from .spec import Handle, node_name

_RUN_IDS = itertools.count(1)


class InProcessGrid:
    """Built by :func:`make_grid` (a subclass of ``flwr.serverapp.Grid`` made on first use, so
    this module imports without Flower)."""


def make_grid(app, supernodes: int, offline=(), run_config=None):
    from flwr.app import Context, Error, Message, RecordDict
    from flwr.common.constant import ErrorCode
    from flwr.serverapp import Grid
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    class _Grid(Grid, InProcessGrid):
        def __init__(self):
            self._run = Run.create_empty(run_id=next(_RUN_IDS))
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = self._run.run_id, 0, 1
            self.contexts = {}
            for j in range(supernodes):
                node_id = 1000 + j
                if node_name(j) in offline:
                    continue
                self.contexts[node_id] = Context(
                    run_id=self._run.run_id, node_id=node_id, state=RecordDict(), run_config=dict(run_config or {}),
                    node_config={"partition-id": j, "num-partitions": supernodes, "name": node_name(j)})
            self.dead = set()
            self._outbox = {}
            self._ids = itertools.count(1)

        def kill(self, name: str) -> None:
            self.dead |= {i for i, c in self.contexts.items() if c.node_config["name"] == name}

        def set_run(self, run) -> None:
            self._run = run

        @property
        def run(self):
            return self._run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self):
            return [i for i in self.contexts if i not in self.dead]

        def push_messages(self, messages):
            ids = []
            for msg in messages:
                mid = str(next(self._ids))
                msg.metadata.__dict__["_message_id"] = mid
                self._outbox[mid] = msg
                ids.append(mid)
            return ids

        def pull_messages(self, message_ids):
            out = []
            for mid in message_ids:
                msg = self._outbox.pop(mid, None)
                if msg is None or msg.metadata.dst_node_id in self.dead:
                    continue   # a dead SuperNode never answers
                context = self.contexts[msg.metadata.dst_node_id]
                try:
                    reply = app(msg, context)
                except Exception as err:  # noqa: BLE001 - a failing ClientApp answers with an error, as in Flower
                    reason = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
                    reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
                out.append(reply)
            return out

        def send_and_receive(self, messages, *, timeout=None):
            return self.pull_messages(self.push_messages(messages))

    return _Grid()


class _Kill(Hooks):
    def __init__(self, grid, faults):
        self.grid, self.faults = grid, faults

    def after_round(self, rnd: int) -> None:
        for name, when in self.faults.items():
            if when == rnd:
                self.grid.kill(name)


def run(spec):
    """The run, in this process: the ServerApp's main function called with the in-process grid."""
    handle = Handle(spec)
    app = client_app(handle)
    offline = [n for n, w in spec.faults.items() if w == "offline"]
    grid = make_grid(app, spec.supernodes, offline)
    result = {}
    server = server_app(handle, _Kill(grid, spec.faults), result)
    from flwr.app import Context, RecordDict
    server(grid, Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    return result["history"]
