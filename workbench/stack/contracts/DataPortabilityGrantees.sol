// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// The workbench's DataPortabilityGrantees: apps that users grant access to.
/// Anyone may register a grantee; only the Permissions contract records permissions.
contract DataPortabilityGrantees {
    struct GranteeInfo {
        address owner;
        address granteeAddress;
        string publicKey;
        uint256[] permissionIds;
    }

    bytes32 public constant PERMISSION_MANAGER_ROLE = keccak256("PERMISSION_MANAGER_ROLE");

    /// The DataPortabilityPermissions contract, fixed at deployment.
    address public immutable permissionManager;
    uint256 public granteesCount;
    mapping(uint256 granteeId => GranteeInfo) private _grantees;
    mapping(address granteeAddress => uint256 granteeId) public granteeAddressToId;

    event GranteeRegistered(
        uint256 indexed granteeId,
        address indexed owner,
        address indexed granteeAddress,
        string publicKey
    );

    error AccessControlUnauthorizedAccount(address account, bytes32 neededRole);
    error ZeroAddress();
    error EmptyPublicKey();
    error GranteeAlreadyRegistered();
    error GranteeNotFound();

    constructor(address permissionManager_) {
        permissionManager = permissionManager_;
    }

    function registerGrantee(address owner, address granteeAddress, string calldata publicKey)
        external
        returns (uint256 granteeId)
    {
        if (owner == address(0) || granteeAddress == address(0)) revert ZeroAddress();
        if (bytes(publicKey).length == 0) revert EmptyPublicKey();
        if (granteeAddressToId[granteeAddress] != 0) revert GranteeAlreadyRegistered();
        granteeId = ++granteesCount;
        GranteeInfo storage g = _grantees[granteeId];
        g.owner = owner;
        g.granteeAddress = granteeAddress;
        g.publicKey = publicKey;
        granteeAddressToId[granteeAddress] = granteeId;
        emit GranteeRegistered(granteeId, owner, granteeAddress, publicKey);
    }

    function grantees(uint256 granteeId) external view returns (GranteeInfo memory) {
        return _grantees[granteeId];
    }

    function granteePermissionIds(uint256 granteeId) external view returns (uint256[] memory) {
        return _grantees[granteeId].permissionIds;
    }

    /// Reverts `GranteeNotFound` for an unknown id, which is how permissions check the grantee.
    function addPermissionToGrantee(uint256 granteeId, uint256 permissionId) external {
        if (msg.sender != permissionManager) {
            revert AccessControlUnauthorizedAccount(msg.sender, PERMISSION_MANAGER_ROLE);
        }
        GranteeInfo storage g = _grantees[granteeId];
        if (g.owner == address(0)) revert GranteeNotFound();
        g.permissionIds.push(permissionId);
    }
}
