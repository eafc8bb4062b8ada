"""HashedNet (Chen et al. 2015): each sparse layer's virtual weights drawn from a
small shared bank by a hash, one bank per sparse layer sized to its budget."""

from .registry import Method, register


def model(cfg, num_classes: int, in_channels: int):
    from ..baselines.hashed import hash_layers
    from ..models import build_model, sparse_names
    from ..sparse import layer_counts

    m, s = cfg.model, cfg.sparsity
    net = build_model(m.name, width=m.width, depth=m.depth, num_classes=num_classes, in_channels=in_channels)
    names = sparse_names(m.name, net, m.sparse_layers, m.dense_layers)
    shapes = {n: p.shape for n, p in net.named_parameters() if n in names}
    hash_layers(net, layer_counts(shapes, 1.0 - s.sparsity, s.distribution), seed=cfg.train.seed)
    return net


register(Method("hashednet", "baseline", "hashed weight sharing, one bank per sparse layer sized to its budget",
                masks=False, model=model, masking=lambda cfg, model, optimizer, steps_per_epoch: None))
