"""The Kubernetes object model: Services, EndpointSlices (legacy Endpoints converted), Nodes, Pods.

`load_paths` reads YAML/JSON files (multi-document, `kind: List`) into a `Cluster`; invalid input
raises `ModelError` naming the file, the object and the field.
"""

from dataplane.k8s.errors import ModelError
from dataplane.k8s.loader import load_objects, load_path, load_paths, load_text
from dataplane.k8s.objects import (Cluster, Endpoint, EndpointPort, EndpointSlice,
                                   LoadBalancerIngress, Node, NodeAddress, Pod, Service, ServicePort)

__all__ = ["Cluster", "Endpoint", "EndpointPort", "EndpointSlice", "LoadBalancerIngress", "ModelError",
           "Node", "NodeAddress", "Pod", "Service", "ServicePort", "load_objects", "load_path",
           "load_paths", "load_text"]
