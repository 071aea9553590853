"""The lab: network namespaces, hosts, pods and etcd on one machine, for the demo, bench and
the tests. Nothing in the daemon imports it."""
