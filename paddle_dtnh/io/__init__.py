"""Every file the library writes or reads: atomic saves and a loader that
runs no code (:mod:`.files`), training checkpoints (:mod:`.checkpoint`)."""
