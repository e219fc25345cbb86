"""The ROS-free core of clipseg_ros: CLIPSeg inference and the geometry around it.

Nothing here imports rclpy, a message package or the node's modules (``test_core_boundary.py``
checks it), so the engine runs, is tested and is benchmarked in a plain Python process, a
notebook, or a GPU machine without ROS::

    from clipseg_ros.core.engine import ClipSegEngine
"""
