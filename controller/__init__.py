"""The daemon: config, supervisor, tag store, sinks and the `cellfab` command line.

Flow (one direction): drivers -> Scan -> hub (tag store + journal) -> sinks (MQTT, InfluxDB).
"""
