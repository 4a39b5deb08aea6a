"""The broker: one process, one event loop serving the client protocol (zbroker/protocol.py),
the partition logs it leads, a metadata cache fed by coordinator watches, and a controller thread
that wins the /controller election on one broker of the cluster.

    server.py      start-up, the loop (ROUTER socket, timers, delayed fetches), request handlers
    config.py      the broker's settings (Kafka's names)
    metadata.py    the coordinator key layout, the immutable metadata image and its watcher
    controller.py  the controller: election, partition assignment, leader changes, admin APIs
    replicas.py    the partition logs this broker hosts
"""
