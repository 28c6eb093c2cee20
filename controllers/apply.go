package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
)

const (
	// fieldOwner is the field manager of everything the operator applies.
	fieldOwner = client.FieldOwner("kuberelay")
	// appliedHashAnnotation holds the hash of what the operator last applied to an
	// object, so an unchanged object is not written again.
	appliedHashAnnotation = "relay.kuberelay.io/applied-hash"
)

// applyOwned makes the cluster hold desired (a fully specified object with its owner
// reference set) using server-side apply, and writes nothing when the object already
// carries the hash of an identical desired state: a resync that changes nothing makes
// no API writes at all. It reports whether it wrote.
func applyOwned(ctx context.Context, c client.Client, desired client.Object) (bool, error) {
	gvk, err := apiutil.GVKForObject(desired, c.Scheme())
	if err != nil {
		return false, err
	}
	desired.GetObjectKind().SetGroupVersionKind(gvk)
	desired.SetManagedFields(nil)
	desired.SetResourceVersion("")
	hash, err := objectHash(desired)
	if err != nil {
		return false, err
	}

	// Only metadata is read, so the cache never holds Secret data.
	current := &metav1.PartialObjectMetadata{}
	current.SetGroupVersionKind(gvk)
	switch err := c.Get(ctx, client.ObjectKeyFromObject(desired), current); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return false, err
	case current.GetAnnotations()[appliedHashAnnotation] == hash && current.GetDeletionTimestamp() == nil:
		return false, nil
	}

	ann := desired.GetAnnotations()
	if ann == nil {
		ann = map[string]string{}
	}
	ann[appliedHashAnnotation] = hash
	desired.SetAnnotations(ann)
	//nolint:staticcheck // typed objects are applied as a whole; apply configurations would duplicate every builder
	if err := c.Patch(ctx, desired, client.Apply, fieldOwner, client.ForceOwnership); err != nil {
		return false, fmt.Errorf("applying %s %s: %w", gvk.Kind, desired.GetName(), err)
	}
	return true, nil
}

// objectHash is a stable digest of an object as the operator would apply it.
func objectHash(obj client.Object) (string, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12]), nil
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
