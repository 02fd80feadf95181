"""Glue to the frameworks around Paddle: PaddleHub (:mod:`.hub`),
``paddle.Model`` (:mod:`.hapi`), VisualDL (:mod:`.visualdl`). Each imports
its framework only when used."""
