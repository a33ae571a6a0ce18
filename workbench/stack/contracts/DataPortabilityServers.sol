// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// The workbench's DataPortabilityServers: servers by address, and the servers each user trusts.
/// Same signatures as Vana's for the subset the flow uses. Only the Permissions contract writes.
contract DataPortabilityServers {
    struct ServerInfo {
        uint256 id;
        address owner;
        address serverAddress;
        string publicKey;
        string url;
    }

    struct AddServerInput {
        address serverAddress;
        string publicKey;
        string serverUrl;
    }

    bytes32 public constant PERMISSION_MANAGER_ROLE = keccak256("PERMISSION_MANAGER_ROLE");

    /// The DataPortabilityPermissions contract, fixed at deployment.
    address public immutable permissionManager;
    uint256 public serversCount;
    mapping(uint256 serverId => ServerInfo) private _servers;
    mapping(address serverAddress => uint256 serverId) public serverAddressToId;
    mapping(address user => uint256[] serverIds) private _userServerIds;
    mapping(address user => mapping(uint256 serverId => bool)) private _trusted;

    event ServerRegistered(
        uint256 indexed serverId,
        address indexed owner,
        address indexed serverAddress,
        string publicKey,
        string url
    );
    event ServerTrusted(address indexed user, uint256 indexed serverId);

    error AccessControlUnauthorizedAccount(address account, bytes32 neededRole);
    error EmptyUrl();
    error EmptyPublicKey();
    error ServerUrlMismatch(string existingUrl, string providedUrl);

    constructor(address permissionManager_) {
        permissionManager = permissionManager_;
    }

    function servers(uint256 serverId) external view returns (ServerInfo memory) {
        return _servers[serverId];
    }

    function userServerIdsValues(address userAddress) external view returns (uint256[] memory) {
        return _userServerIds[userAddress];
    }

    function userServerIdsLength(address userAddress) external view returns (uint256) {
        return _userServerIds[userAddress].length;
    }

    /// Registers the server if its address is new, then marks it trusted by `ownerAddress`.
    function addAndTrustServerByManager(address ownerAddress, AddServerInput calldata input)
        external
    {
        if (msg.sender != permissionManager) {
            revert AccessControlUnauthorizedAccount(msg.sender, PERMISSION_MANAGER_ROLE);
        }
        uint256 serverId = serverAddressToId[input.serverAddress];
        if (serverId == 0) {
            serverId = _register(ownerAddress, input);
        } else if (keccak256(bytes(_servers[serverId].url)) != keccak256(bytes(input.serverUrl))) {
            revert ServerUrlMismatch(_servers[serverId].url, input.serverUrl);
        }
        if (!_trusted[ownerAddress][serverId]) {
            _trusted[ownerAddress][serverId] = true;
            _userServerIds[ownerAddress].push(serverId);
            emit ServerTrusted(ownerAddress, serverId);
        }
    }

    function _register(address owner, AddServerInput calldata input) private returns (uint256 id) {
        if (bytes(input.serverUrl).length == 0) revert EmptyUrl();
        if (bytes(input.publicKey).length == 0) revert EmptyPublicKey();
        id = ++serversCount;
        _servers[id] = ServerInfo(id, owner, input.serverAddress, input.publicKey, input.serverUrl);
        serverAddressToId[input.serverAddress] = id;
        emit ServerRegistered(id, owner, input.serverAddress, input.publicKey, input.serverUrl);
    }
}
