"""The Flower ClientApp: one SuperNode hosts one client (a device, or a silo of users).

Run by a SuperNode (``flower-supernode --node-config 'partition-id=I
num-partitions=N'``, plus ``identity-key``/``pki`` for the malicious model and
Paillier, and the node's own settings ``reproducible-noise`` and
``paillier-key-bits``, :class:`~securefedrec.flower.settings.NodeSettings`) or by
Flower's simulation runtime (``flwr run . local``; the rest of each simulated
node's config comes from the file ``$SFR_NODE_CONFIG`` names,
:func:`~securefedrec.flower.settings.node_config`). Each protocol stage is its
own message type (``train.sfr_advertise``, ``query.sfr_share_keys``, ...; see
:class:`~securefedrec.flower.messages.FlowerStage`); the work is done by
:class:`~securefedrec.flower.node.runtime.NodeRuntime`. The default ``train``
action serves Flower's own ``SecAggPlusWorkflow`` (``transport = "flower-secaggplus"``).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from securefedrec.errors import DecodeError
from securefedrec.flower.messages import FlowerStage, pack, unpack
from securefedrec.flower.node import NodeRuntime, load_identity
from securefedrec.flower.settings import (
    deployment_settings,
    experiment_config,
    node_config,
    node_settings,
    partition_of,
)

__all__ = ["app", "handle"]

app = ClientApp()


def handle(message: Message, context: Context) -> Message:
    """Answer one of our protocol messages for the clients this node hosts."""
    try:
        stage = FlowerStage(message.metadata.message_type)
    except ValueError:
        raise DecodeError(f"unknown securefedrec message type {message.metadata.message_type!r}") from None
    request = unpack(message.content, expect=stage, where=f"{stage.name} message from the server")
    settings, seed = deployment_settings(context.run_config)
    own = node_config(context.node_config)  # + $SFR_NODE_CONFIG (Flower's simulation runtime)
    runtime = NodeRuntime(lambda: experiment_config(context.run_config, own)[0], settings,
                          partition_of(own), context.state, seed=seed, identity=load_identity(own),
                          node=node_settings(own))
    return Message(pack(runtime.handle(request)), reply_to=message)


for _stage in FlowerStage:
    _category = _stage.value.split(".", 1)[0]
    getattr(app, _category)(_stage.action)(handle)


@app.train(mods=[secaggplus_mod])
def flower_secaggplus_train(message: Message, context: Context) -> Message:
    """Flower's ``SecAggPlusWorkflow`` path (``transport = "flower-secaggplus"``): train, return the delta."""
    from securefedrec.flower.flower_secagg import client_train

    return client_train(message, context)
