package controllers

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
)

// fieldOwner is the field manager of everything the operator applies.
const fieldOwner = client.FieldOwner("kuberelay")

// applyOwned makes the cluster hold desired (a fully specified object with its owner
// reference set) with server-side apply, forcing ownership, on every reconcile. The
// operator owns these objects as GitOps tools own theirs: a kubectl edit or scale of a
// relay's Deployment, Service, ConfigMap, Secret, ServiceAccount or
// PodDisruptionBudget is undone at the reconcile it triggers. When nothing differs the
// API server detects the apply as a no-op and persists nothing, so an idle relay's
// objects are never rewritten.
func applyOwned(ctx context.Context, c client.Client, desired client.Object) error {
	gvk, err := apiutil.GVKForObject(desired, c.Scheme())
	if err != nil {
		return err
	}
	desired.GetObjectKind().SetGroupVersionKind(gvk)
	desired.SetManagedFields(nil)
	desired.SetResourceVersion("")
	//nolint:staticcheck // typed objects are applied as a whole; apply configurations would duplicate every builder
	if err := c.Patch(ctx, desired, client.Apply, fieldOwner, client.ForceOwnership); err != nil {
		return fmt.Errorf("applying %s %s: %w", gvk.Kind, desired.GetName(), err)
	}
	return nil
}

// deleteIfExists removes an object the relay no longer needs (a disabled
// PodDisruptionBudget). It asks the cache first, so that a resync makes no request
// for an object that is already gone.
func deleteIfExists(ctx context.Context, c client.Client, obj client.Object) error {
	gvk, err := apiutil.GVKForObject(obj, c.Scheme())
	if err != nil {
		return err
	}
	current := &metav1.PartialObjectMetadata{}
	current.SetGroupVersionKind(gvk)
	switch err := c.Get(ctx, client.ObjectKeyFromObject(obj), current); {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return err
	case current.GetDeletionTimestamp() != nil:
		return nil
	}
	if err := c.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}
