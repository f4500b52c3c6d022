"""The scale-out tier: ingest replicas that take the collaborators' bytes, and a root that owns the rounds.

* :mod:`~fedagg.tier.partials`: a round's per-replica partial aggregate (float64 weighted sums and weights);
* :mod:`~fedagg.tier.division`: at the root, the next tensors from the merged partial, through the task's
  aggregator;
* :mod:`~fedagg.tier.claims`: the root's durable claims (exactly once across replicas) and lost replicas;
* :mod:`~fedagg.tier.collection`: the root's collected partials, checked against the claims;
* :mod:`~fedagg.tier.wire`: partials to and from the tier protocol's messages;
* :mod:`~fedagg.tier.model_files`: the round's model, served by the root, checked and kept by the replicas;
* :mod:`~fedagg.tier.root_service`: the root's tier port (mTLS, the replicas' identities, limits);
* :mod:`~fedagg.tier.round_notices`: the root's round (OPEN, COLLECTING, FINISHED) as the replicas watch it;
* :mod:`~fedagg.tier.root_rounds`: the root's federation fed by claims and divided from the merged partials;
* :mod:`~fedagg.tier.root_link`: an ingest replica's client of that port;
* :mod:`~fedagg.tier.ingest_round`: an ingest replica's round (spool, claim, acknowledge, fold; recovery);
* :mod:`~fedagg.tier.ingest_uploads`: an ingest replica's uploads, received by the standalone server's receiver;
* :mod:`~fedagg.tier.forwarding`: the collaborator calls an ingest replica relays to its root, as bytes;
* :mod:`~fedagg.tier.ingest_server`: an ingest replica's federation port (the collaborators' Aggregator service);
* :mod:`~fedagg.tier.round_watch`: an ingest replica following its root's round (model, uploads, partial);
* :mod:`~fedagg.tier.ingest_replica`: an ingest replica, assembled (what ``fedagg serve`` runs for the role);
* :mod:`~fedagg.tier.events`: tier events for metrics (:mod:`fedagg.ops.tier_metrics`).
"""
