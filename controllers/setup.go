package controllers

import (
	"context"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/kuberelay/kuberelay/controllers/render"
)

// Options configure the controllers.
type Options struct {
	// RelayImage is the image relay pods run unless an SmtpRelay names another.
	RelayImage string
	// Hasher bcrypt-hashes client passwords.
	Hasher render.PasswordHasher
}

// Setup registers every reconciler with mgr.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) error {
	r := &SmtpRelayReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("kuberelay"),
		Image:     o.RelayImage,
		Hasher:    o.Hasher,
	}
	return r.SetupWithManager(ctx, mgr)
}
