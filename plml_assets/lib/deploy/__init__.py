"""Running plml on a cluster: per-step Kubernetes requests and limits derived from measured runs."""
