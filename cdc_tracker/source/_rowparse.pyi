from typing import Any

def change(
    data: str | bytes | memoryview, /
) -> (
    tuple[
        str,
        str,
        str,
        str,
        dict[str, Any] | None,
        dict[str, Any] | None,
        dict[str, str],
        tuple[str, ...],
    ]
    | None
): ...
