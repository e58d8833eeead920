"""The WAIT_FOR_PREVIOUS constexpr of the kernels a whole-step plan launches as programmatic
dependents (kernels/programmatic_launch.py)."""

from ..serialization.payload_serializer import PROGRAMMATIC_LAUNCH_ARCH


def wait_for_previous_constexpr(wait_for_previous: bool, arch: int) -> dict:
    """{"WAIT_FOR_PREVIOUS": wait_for_previous}; griddepcontrol exists from sm_90 on only."""
    if wait_for_previous and arch < PROGRAMMATIC_LAUNCH_ARCH:
        raise ValueError(f"sm_{arch} has no programmatic dependent launch (sm_{PROGRAMMATIC_LAUNCH_ARCH} and later)")
    return {"WAIT_FOR_PREVIOUS": wait_for_previous}
