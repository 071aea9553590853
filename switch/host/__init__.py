"""What programs and reads the host's kernel: netlink requests one at a time (netlink) and in
batches (netlink_batch), lean dumps (netlink_dump), the rtnetlink numbers (rtnl), repair of
what others remove (reconcile), and the iptables rules of --ip-masq and the forward rules
(traffic_rule_text, traffic_rules, iptables).

Below the backends, which use it to program peers; it imports nothing of weft but control."""
