"""weft's CNI plugin (`weft-cni`, CNI type "weft"): flannel's plugin, reading weft's subnet.env.

errors (CNI error codes and JSON), versions (the spec versions we speak), subnet_file (reading
subnet.env), delegate (rendering the bridge + host-local delegate conf), store (the rendered
delegate kept per container for DEL), invoke (exec'ing a plugin as CNI's exec protocol says),
runtime (a conflist run as a container runtime runs it: for the lab and tests), plugin (the
executable), install (`weft cni install`). Everything here imports only the standard library,
so the plugin starts fast.
"""
