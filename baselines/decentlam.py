"""DecentLaM: decentralized momentum SGD that puts a partially averaged ("modified") gradient through momentum."""

from __future__ import annotations

from bench.core.protocol import Algorithm


class DecentLaM(Algorithm):
    """DecentLaM (Yuan, Chen, Huang, Zhang, Pan, Xu, Yin, ICCV 2021, "DecentLaM: Decentralized Momentum SGD for
    Large-batch Deep Training").

    Each step a node forms its local proposal z_i = x_i - lr g_i (weight decay folded into g_i), exchanges it with
    its neighbours, and replaces its gradient by the modified gradient g~_i = (x_i - sum_j W_ij z_j) / lr, which the
    optimizer's momentum (beta = --momentum, the paper's 0.9 by default) then applies: m <- beta m + g~,
    x <- x - lr m. In matrix form x+ = W(x - lr g) + beta (x - x-), which keeps D-PSGD's fixed point whatever beta
    is (DmSGD's bias grows with lr / (1 - beta)). With beta = 0 it is D-PSGD in its adapt-then-combine form.
    """

    name = "decentlam"
    summary = "DecentLaM: exchange local SGD proposals, momentum on the modified (partially averaged) gradient"
    paper = "Yuan et al., ICCV 2021"
    model_copies = 5  # peak memory per node in the simulator, in models (measured, default MLP)

    def start(self) -> None:
        self.weights = self.node.comm.topology.mixing_weights(self.node.rank)
        # Weight decay goes into g before the proposal; the optimizer must not add it to g~ again.
        self.weight_decay = 0.0
        for group in self.node.optimizer.param_groups:
            self.weight_decay, group["weight_decay"] = group["weight_decay"], 0.0

    def after_backward(self, step: int) -> None:
        node = self.node
        x, g = node.params, node.grads
        lr = node.optimizer.param_groups[0]["lr"]
        if self.weight_decay:
            g.add_(x, alpha=self.weight_decay)
        if lr == 0:  # no proposal to mix: g~ is undefined, and a zero learning rate moves nothing anyway
            return
        z = x - lr * g
        theirs = node.comm.neighbor_exchange(z, "model")
        mixed = z * self.weights[node.rank]
        for peer, zj in theirs.items():
            mixed.add_(zj, alpha=self.weights[peer])
        g.copy_(x - mixed).div_(lr)
        self.count("exchanges", int(bool(theirs)))
