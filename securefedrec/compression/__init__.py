"""Compressed transmission that composes with secure aggregation (docs/ARCHITECTURE.md, step 5 of a round).

Compressors, by name (``--compression``):

==========  ===================================================================
``none``    float vectors, as before
``q8/q16``  stochastic fixed-point quantization to 8 / 16 bits (sign included);
            unbiased. Uplink: the protocol's own :class:`~protocols.FixedPoint`
            encodes with ``value_bits = v`` in a ring of ``v + ceil(log2 n)``
            bits (SecAgg / SecAgg+ pack ``b`` bits per value, Paillier packs
            ``b``-bit slots, plaintext sends int8 / int16).
``randk:F`` shared-seed random-k: each round a *public* seed picks the same
            ``ceil(F L)`` coordinates for every client, so masked sums line up;
            only those are handed to the protocol and the server scatters the
            decoded sum back. Per-client error feedback keeps what was not sent.
``topk:F``  per-client top-k by magnitude with error feedback; indices + float32
            values. Plaintext only (see Notes).
``mod:B``   a ``B``-bit ring sized for the *sum*, not for every client's worst
            case: modular clipping after a public random rotation (Kairouz, Liu,
            Steinke, ICML 2021). Lossy by design: rare overflows wrap. Masking
            protocols and plaintext; Paillier refuses it (see Notes).
==========  ===================================================================

Every compressor has a self-contained round-trip codec (:meth:`Compressor.encode`
-> bytes -> :meth:`Compressor.decode`), used for the downlink, for top-k and by
the shared round-trip tests. :class:`Uplink` applies a compressor between the
(clipped, privatized) client deltas and the aggregator; :class:`Downlink`
compresses the broadcast of the global vector (quantized delta from what
clients already hold) and counts its bytes per client.

Notes:
    Top-k leaks: the indices a client sends are the items whose factors moved
    most, i.e. the items the user rated (the "rated-items" attack needs nothing
    else). Secure aggregation cannot hide them, since masked vectors must agree
    on coordinates. Random-k avoids this because its coordinates come from a
    public per-round seed that does not depend on any client's data.

    How small q8 can get under masking. A masked value must be uniform over a
    ring that holds every possible sum -- two sums that collide modulo the ring
    cannot be told apart -- so with ``n`` clients and ``v``-bit values each
    client sends at least ``log2(n (2^v - 1) + 1)`` bits per coordinate, about
    ``v + log2 n``. The ring of ``v + ceil(log2 n)`` bits is within one bit of
    that bound and is sent bit-exactly. Against the uncompressed 32-bit ring
    (24 value bits + headroom at ~200 clients, as precise as the float run to
    2e-7 RMSE) q8 is therefore (8 + ceil(log2 n)) / 32: 50 % at 129..256
    clients, 53 % at 257..512; below 30 % would take a wider uncompressed ring
    or a lossy sum: ``mod:B`` below (modular clipping after a random rotation,
    as in Kairouz et al. 2021, which lets rare overflows wrap).

    ``mod:B``, how it works. Every round the server publishes random signs
    ``D`` (seed ``[seed, round, STREAM_ROTATE]``); each client sends
    ``R x = DCT(D x)`` (orthonormal, any length), stochastically rounded at a
    common scale and reduced modulo ``2^B`` (``RoundConfig.wrap``); the server
    decodes the signed ring sum and applies ``R^-1``. The rotation spreads every
    update over all coordinates, so the rotated sum's coordinates are close to
    Gaussian with RMS ``sigma = ||sum|| / sqrt(L)``. The ring is sized to hold
    ``+-margin * sigma`` (margin 4.5: a coordinate wraps with probability
    ~7e-6), with ``sigma`` predicted from the previous round's released sum,
    scaled by the clients' count (public: the server learns that sum anyway).
    A wrapped coordinate is off by ``2^B`` units, which ``R^-1`` spreads thinly
    over the whole vector. The rounding noise of the sum has RMS
    ``sqrt(n / 6)`` units against ``2^(B-1) / margin`` units for ``sigma``: at
    ``B = 8`` and ~190 clients about 20 % of the sum's norm, unbiased. The first
    round, with no sum to go by, is exact: ``B + ceil(log2 n)`` bits, values
    clipped to ``clip_range`` as for ``qB``. Because each client's value is
    reduced modulo ``2^B`` rather than clipped, the server's choice of range can
    only cost accuracy, never remove DP noise (post-processing of the sum).
    Paillier cannot wrap: a slot that overflows carries into the next.

    Error feedback with distributed DP: a residual carries its own noise share
    into the round where it is finally sent; accounting that assumes each
    round's release is a fresh Gaussian sum is then approximate.

Layout: :mod:`~securefedrec.compression.codecs` (every codec and the
:data:`COMPRESSORS` registry; a new codec goes there and nowhere else),
:mod:`~securefedrec.compression.feedback` (:class:`ErrorFeedback`),
:mod:`~securefedrec.compression.links` (:class:`Uplink`, :class:`Downlink` and
their checkpoint state).
"""

from securefedrec.compression.codecs import (
    COMPRESSORS,
    Q8,
    Q16,
    STREAM_DOWNLINK,
    STREAM_ROTATE,
    STREAM_SELECT,
    Compressor,
    ModularQuantizer,
    NoCompression,
    Quantizer,
    RandomK,
    TopK,
    parse_compression,
    rotate,
    rotation_signs,
    unrotate,
)
from securefedrec.compression.feedback import ErrorFeedback
from securefedrec.compression.links import Downlink, Uplink, load_state, state_arrays

__all__ = [
    "COMPRESSORS",
    "STREAM_DOWNLINK",
    "STREAM_ROTATE",
    "STREAM_SELECT",
    "Compressor",
    "Downlink",
    "ErrorFeedback",
    "ModularQuantizer",
    "NoCompression",
    "Q8",
    "Q16",
    "Quantizer",
    "RandomK",
    "TopK",
    "Uplink",
    "load_state",
    "parse_compression",
    "rotate",
    "rotation_signs",
    "state_arrays",
    "unrotate",
]
