"""The one error type of the Kubernetes model: it names the file, the object and the field."""

from __future__ import annotations


class ModelError(ValueError):
    """Invalid input: says where (file, object, field) and what is wrong, in one line."""

    def __init__(self, message: str, *, file: str | None = None, obj: str | None = None,
                 field: str | None = None) -> None:
        self.message = message
        self.file = file
        self.obj = obj
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.obj:
            where.append(self.obj)
        if self.field:
            where.append(f"field {self.field}")
        return f"{': '.join(where)}: {self.message}" if where else self.message

    def located(self, *, file: str | None = None, obj: str | None = None) -> "ModelError":
        """The same error with the file (and object) filled in where they were unknown."""
        return ModelError(self.message, file=self.file or file, obj=self.obj or obj, field=self.field)
