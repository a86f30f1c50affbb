"""Past one machine: the same file commands on a Ray cluster (docs/ray.md). Ray is optional
(`pip install 'virtual-rollout[ray]'`) and imported only when a run asks for it."""
