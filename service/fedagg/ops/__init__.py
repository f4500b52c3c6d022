"""Operations: health, metrics, lifecycle (drain and shutdown), shutdown hooks and logging."""
