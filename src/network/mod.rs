//! Pod network namespaces, the built-in bridge + IPAM, the CNI driver, port mappings.
