"""host-local IPAM: range sets from the config, leases as files in a directory shared by every
plugin process of one network, in the reference plugin's on-disk format."""
