"""What the plugins do to the kernel: namespaces, links, addresses, routes, sysctls, iptables.

The equivalents of the reference's pkg/ns, pkg/ip and pkg/ipam. Everything acts in the network
namespace of the calling *thread* (a warm daemon moves a worker thread into the caller's
namespace), so the "host" is /proc/thread-self/ns/net, never /proc/self/ns/net.
"""
