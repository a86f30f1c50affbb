"""Hooks into other people's training loops: `vrollout.integrations.trl.VirtualRolloutCallback`.

Nothing is imported here: each integration imports its own framework when it is imported.
"""
