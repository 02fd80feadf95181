"""The networks the library knows: their registry (:mod:`.architectures`) and
PaddleHub's ResNet-18-vd rebuilt for Paddle 3 (:mod:`.resnet_vd`)."""
