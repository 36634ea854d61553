"""Network definitions: the CIFAR-style ResNets (with the FC-d head, BN neck and SPP variant)
and the CycleGAN generator and discriminator. Plain PyTorch modules; imports nothing else from
the project.
"""
