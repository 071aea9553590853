"""The control plane: network config, leases, the lease registry (etcd, or a JSON snapshot
for offline tools), subnet allocation, renewal, subnet.env and the external interface."""
